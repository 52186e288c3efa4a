"""Requests in flight through a model made of other models (a pipeline, a traffic split), and the
wait for them to end when it is retired: such a model queues nothing of its own, so its drain is
"until nothing is in flight, or the timeout"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class InFlight:
    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def ended(self, timeout_s: float) -> None:
        """Return once nothing is in flight, or after `timeout_s` (the members' drains bound the rest)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
