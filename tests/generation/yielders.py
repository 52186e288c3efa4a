"""A handler whose predict yields, for the streamed-predict tests. Each item is a word; each yield
is the next letter of every item of the call ("" for an item that has run out), until every item
has run out. Items change the behaviour: "forever..." cycles its letters and never runs out;
"die..." makes the worker exit after the call's second chunk; "bad" makes predict raise before its
first yield; a non-string item fails `decode`. A generator closed early logs how far it got."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from inferd import Handler

log = logging.getLogger(__name__)


class Spell(Handler):
    def setup(self, device: str) -> None:
        self.delay_s = float(self.handler_args.get("delay_s", 0.0))

    def decode(self, item: Any) -> str:
        if not isinstance(item, str) or not item:
            raise ValueError(f"each item must be a non-empty string, got {item!r}")
        return item

    def predict(self, items: list[str]) -> Iterator[list[str]]:  # type: ignore[override]
        if "bad" in items:
            raise ValueError("the item 'bad' is refused")
        made = 0
        try:
            while any(item.startswith("forever") or made < len(item) for item in items):
                if made == 2 and any(item.startswith("die") for item in items):
                    os._exit(1)
                yield [_letter(item, made) for item in items]
                made += 1
                time.sleep(self.delay_s)
        except GeneratorExit:
            log.info("spell: closed after %d chunks", made)
            raise


def _letter(item: str, index: int) -> str:
    if item.startswith("forever"):
        return item[index % len(item)]
    return item[index] if index < len(item) else ""
