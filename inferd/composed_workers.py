"""The stand-in supervisor of a model made of other served models (a pipeline's steps, a traffic
split's weighted variants): it holds no workers of its own and is ready while every member's model
has a ready worker, so routes, /readyz, metrics and the status page treat it like any model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferd.daemon import ServedModel

# Each member: how errors name it (e.g. "step 'decode'"), and its model now (None: not served).
Members = Callable[[], list[tuple[str, "ServedModel | None"]]]


class ComposedWorkers:
    def __init__(self, members: Members) -> None:
        self._members = members
        self.handles: dict[str, Any] = {}  # no workers of its own
        self.restarts_total = 0
        self.info = None

    @property
    def ready_count(self) -> int:
        return min((m.workers.ready_count if m is not None else 0) for _, m in self._members())

    @property
    def unavailable_reason(self) -> str | None:
        for what, model in self._members():
            if model is None:
                return f"{what} is not served"
            if not model.workers.ready_count:
                return f"{what}: {model.workers.unavailable_reason or 'no ready worker yet'}"
        return None

    @property
    def state(self) -> str:
        return "ready" if self.ready_count else "unavailable"

    async def start(self) -> None:
        """Nothing to start: the members' models start themselves."""

    async def stop(self, timeout_s: float) -> None:
        """Nothing to stop."""
