"""A retired generation's scheduler hands new sequences on to the name's next generation (a request
that looked its model up before a reload and submits after), or refuses them at once."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.errors import ModelUnavailable
from inferd.generation.scheduler import GenerationPolicy, Scheduler
from inferd.messages import Generate, Sampling


class NoWorkers:
    """A supervisor with a ready count but no worker handles: sequences stay queued."""

    def __init__(self) -> None:
        self.unavailable_reason = None
        self.ready_count = 1
        self.handles: dict[str, Any] = {}
        self.on_chunks: Any = None
        self.on_worker_gone: Any = None


class Quiet:
    def first_token(self, wait_s: float, prompt_tokens: int) -> None: ...
    def sequence_done(self, tokens: int, decode_s: float) -> None: ...
    def request_cancelled(self) -> None: ...


def scheduler() -> Scheduler:
    return Scheduler("m", GenerationPolicy(4, 8, 30.0), NoWorkers(), Quiet())  # type: ignore[arg-type]


def sequence(sequence_id: int) -> Generate:
    return Generate(sequence_id, "hello", 4, 64, Sampling(), ())


async def test_a_retired_scheduler_queues_nothing_and_hands_on() -> None:
    old, new = scheduler(), scheduler()
    old.hand_on(lambda: new)
    stream = old.open(sequence)
    assert (old.queue_depth, new.queue_depth) == (0, 1)
    stream.close()
    assert new.queue_depth == 0


async def test_with_nothing_to_hand_on_to_it_refuses_at_once() -> None:
    old = scheduler()
    old.hand_on(lambda: None)
    with pytest.raises(ModelUnavailable, match="stopped or removed"):
        old.open(sequence)
