"""A handler for the security tests: answers each item with its size, after `delay_s`, so large
items queue without large answers."""

from __future__ import annotations

import time
from typing import Any

from inferd import Handler


class Sizes(Handler):
    def predict(self, items: list[Any]) -> list[Any]:
        time.sleep(float(self.handler_args.get("delay_s", 0.0)))
        return [len(item) if isinstance(item, (str, list, dict)) else 1 for item in items]
