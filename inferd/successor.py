"""Where a retired generation's late requests go.

A route looks its model up when the request arrives and submits once the body is read, so a
request can hold a generation that a reload has just replaced (or, for a version, removed) and
reach its batcher after that batcher has drained and stopped; queued there, nothing would ever
take it. A retiring model therefore hands these requests on, from the moment it is swapped out,
to whatever serves its name now: the new generation, or a removed version's model's default.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from inferd.errors import ModelUnavailable
from inferd.messages import Payload

if TYPE_CHECKING:
    from inferd.daemon import ServedModel


class Successor:
    """A retired model's stand-in batcher: it queues nothing and passes each request on."""

    def __init__(self, name: str, lookup: Callable[[], ServedModel | None]) -> None:
        self.name = name
        self._lookup = lookup
        self.queue_depth = 0
        self.inflight_requests = 0

    def model(self) -> ServedModel | None:
        """What serves the name now."""
        return self._lookup()

    async def infer(self, payload: Payload, items: int, key: Hashable, priority: int = 0) -> Payload:
        model = self._lookup()
        if model is None:
            raise ModelUnavailable(f"model {self.name!r} was removed by a reload")
        return await model.batcher.infer(payload, items, key, priority)

    def start(self) -> None:
        """Nothing to start."""

    async def drain(self, timeout_s: float) -> None:
        """Nothing of its own to drain."""

    async def stop(self) -> None:
        """Nothing to stop."""
