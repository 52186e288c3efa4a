"""Tiny handler steps for pipeline tests: each shows one thing a step can do to the data."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from inferd import Handler


class Parse(Handler):
    """Text or bytes of comma-separated numbers -> a float32 vector; bytes that are not text fail."""

    def decode(self, item: Any) -> np.ndarray:
        text = item.decode("utf-8") if isinstance(item, bytes) else item
        if not isinstance(text, str) or "bad" in text:
            raise ValueError(f"expected comma-separated numbers, got {text!r}")
        return np.array([float(part) for part in text.split(",")], dtype=np.float32)

    def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(float(self.handler_args.get("delay_s", 0.0)))
        return items


class Scale(Handler):
    """Each vector times `factor`; answers facts about its batch when `facts` is set."""

    def predict(self, items: list[Any]) -> list[Any]:
        time.sleep(float(self.handler_args.get("delay_s", 0.0)))
        factor = float(self.handler_args.get("factor", 1.0))
        if self.handler_args.get("facts"):
            return [{"batch_size": len(items), "pid": os.getpid()} for _ in items]
        return [np.asarray(item, dtype=np.float32) * factor for item in items]


class Total(Handler):
    """Each item's numbers summed: a plain JSON value; a joined item sums each of its parts."""

    def predict(self, items: list[Any]) -> list[Any]:
        if self.handler_args.get("crash_on_total") and any(float(np.sum(i)) == 666 for i in items):
            os._exit(3)
        return [_total(item) for item in items]


def _total(item: Any) -> Any:
    if isinstance(item, dict):
        return {name: _total(part) for name, part in item.items()}
    return float(np.sum(item))


class Fill(Handler):
    """Each vector -> a 3x224x224 float32 image of its sum (past the segment threshold): a big
    tensor for the next step, as a decode step gives."""

    def predict(self, items: list[Any]) -> list[np.ndarray]:
        return [np.full((3, 224, 224), float(np.sum(item)), dtype=np.float32) for item in items]
