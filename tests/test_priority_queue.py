"""The priority queue alone (explicit times), and the batcher ordering by it on a real event loop
with in-memory workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from inferd.batching import Batcher, BatchPolicy
from inferd.config import parse_config
from inferd.errors import BadRequest
from inferd.messages import Batch, BatchDone
from inferd.priority import PriorityPolicy, check_priority, priority_policy
from inferd.priority_queue import PROMOTED, PriorityQueue
from tests.test_batching import FakePool, FakeWorker, Observer


@dataclass(eq=False)
class Item:
    name: str
    level: int
    arrived: float


def names(queue: PriorityQueue[Item]) -> list[str]:
    return [item.name for item in queue]


def queue_of(*items: Item, promote_after_s: float = 10.0) -> PriorityQueue[Item]:
    queue: PriorityQueue[Item] = PriorityQueue(3, promote_after_s)
    for item in items:
        queue.append(item)
    return queue


def test_higher_levels_first_and_fifo_within_a_level() -> None:
    queue = queue_of(Item("low1", 3, 0.0), Item("mid1", 2, 0.1), Item("high1", 1, 0.2), Item("low2", 3, 0.3),
                     Item("high2", 1, 0.4), Item("mid2", 2, 0.5))  # fmt: skip
    assert names(queue) == ["high1", "high2", "mid1", "mid2", "low1", "low2"]
    assert len(queue) == 6 and queue.head().name == "high1"
    assert [queue.popleft().name for _ in range(6)] == ["high1", "high2", "mid1", "mid2", "low1", "low2"]
    assert not queue and len(queue) == 0


def test_a_request_past_the_limit_goes_ahead_of_every_one_that_is_not() -> None:
    queue = queue_of(Item("old-low", 3, 0.0), Item("old-mid", 2, 1.0), Item("new-low", 3, 5.0),
                     Item("high", 1, 9.0), promote_after_s=4.0)  # fmt: skip
    assert queue.promote(now=3.9) == 0
    assert names(queue) == ["high", "old-mid", "old-low", "new-low"]
    assert queue.promote(now=5.5) == 2  # old-low waited 5.5 s and old-mid 4.5 s; new-low 0.5 s
    assert names(queue) == ["old-low", "old-mid", "high", "new-low"]  # promoted ones in arrival order
    assert queue.head().level == PROMOTED and len(queue) == 4


def test_one_level_alone_is_never_reordered() -> None:
    items = [Item(f"r{n}", 2, float(n)) for n in range(5)]
    queue = queue_of(*items, promote_after_s=1.0)
    assert queue.promote(now=100.0) == 0
    assert names(queue) == ["r0", "r1", "r2", "r3", "r4"] and all(item.level == 2 for item in items)


def test_remove_requeue_and_taking_a_batch_keep_the_order() -> None:
    high, low1, low2, low3 = Item("high", 1, 0.0), Item("low1", 3, 0.1), Item("low2", 3, 0.2), Item("low3", 3, 0.3)
    queue = queue_of(low1, high, low2, low3)
    assert queue.remove(low2) and not queue.remove(low2)
    assert names(queue) == ["high", "low1", "low3"]
    queue.remove_taken([high, low3])  # low3 is not at its level's head: the slow path
    assert names(queue) == ["low1"] and len(queue) == 1
    queue.requeue_front([high, low3])  # a lost batch comes back ahead of its levels, in order
    assert names(queue) == ["high", "low3", "low1"] and len(queue) == 3
    queue.clear()
    assert not queue and names(queue) == []


class GatedWorker(FakeWorker):
    """Answers its batches only once `gate` is set: the test queues requests behind a busy worker."""

    def __init__(self) -> None:
        super().__init__("w")
        self.gate = asyncio.Event()
        self.answering: set[asyncio.Future[None]] = set()  # kept: the loop holds tasks only weakly

    def submit(self, batch: Batch) -> asyncio.Future[BatchDone]:
        self.batches.append(batch)
        self.busy = True
        future: asyncio.Future[BatchDone] = asyncio.get_running_loop().create_future()
        self.answering.add(asyncio.ensure_future(self._answer_when_open(batch, future)))
        return future

    async def _answer_when_open(self, batch: Batch, future: asyncio.Future[BatchDone]) -> None:
        await self.gate.wait()
        self._finish(batch, future)


class PromotionObserver(Observer):
    def __init__(self) -> None:
        super().__init__()
        self.promoted = 0

    def requests_promoted(self, count: int) -> None:
        self.promoted += count


def make(
    worker: FakeWorker, promote_after_s: float = 60.0, max_batch_size: int = 1
) -> tuple[Batcher, PromotionObserver]:
    pool, observer = FakePool([worker]), PromotionObserver()
    policy = BatchPolicy(max_batch_size, 0.0, 100, 30.0, priority=PriorityPolicy(3, 2, promote_after_s))
    batcher = Batcher("m", policy, pool, observer, lambda worker, reason: None)  # type: ignore[arg-type]
    worker.on_free = batcher.wake
    batcher.start()
    return batcher, observer


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


async def queued(batcher: Batcher, depth: int) -> None:
    await until(lambda: batcher.queue_depth >= depth)


def served(worker: FakeWorker) -> list[Any]:
    return [item for batch in worker.batches for payload in batch.payloads for item in payload]


async def test_the_batcher_serves_by_priority_then_arrival() -> None:
    worker = GatedWorker()
    batcher, _ = make(worker)
    tasks = [asyncio.ensure_future(batcher.infer(["busy"], 1, None))]
    await until(lambda: worker.busy)
    for name, priority in [("low1", 3), ("default1", 0), ("high1", 1), ("low2", 3), ("high2", 1), ("default2", 2)]:
        tasks.append(asyncio.ensure_future(batcher.infer([name], 1, None, priority)))
        await queued(batcher, len(tasks) - 1)
    worker.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert served(worker) == ["busy", "high1", "high2", "default1", "default2", "low1", "low2"]
    await batcher.stop()


async def test_a_starving_request_is_promoted_past_a_stream_of_higher_ones() -> None:
    worker = FakeWorker("w", delay_s=0.01)
    batcher, observer = make(worker, promote_after_s=0.05)
    stop = asyncio.Event()

    async def high_client() -> None:
        while not stop.is_set():
            await batcher.infer(["high"], 1, None, 1)

    clients = [asyncio.ensure_future(high_client()) for _ in range(3)]
    await queued(batcher, 2)
    # Two or more high requests wait at every dispatch: without promotion the low one never runs.
    answer = await asyncio.wait_for(batcher.infer(["low"], 1, None, 3), 5)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients), 5)
    assert answer == ["low"] and observer.promoted >= 1
    await batcher.stop()


async def test_a_batch_takes_the_heads_key_across_levels_and_never_mixes_keys() -> None:
    worker = GatedWorker()
    batcher, _ = make(worker, max_batch_size=4)
    for items in (1, 4):  # a flat batch cost: lower requests ride along an urgent batch for free
        batcher.cost.observe(items, 0.001)
    tasks = [asyncio.ensure_future(batcher.infer(["busy"], 1, "a"))]
    await until(lambda: worker.busy)
    for name, key, priority in [("low-a", "a", 3), ("low-b", "b", 3), ("high-b", "b", 1), ("mid-a", "a", 2)]:
        tasks.append(asyncio.ensure_future(batcher.infer([name], 1, key, priority)))
        await queued(batcher, len(tasks) - 1)
    worker.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    batches = [[item for payload in batch.payloads for item in payload] for batch in worker.batches]
    assert batches == [["busy"], ["high-b", "low-b"], ["mid-a", "low-a"]]
    await batcher.stop()


MODEL = "models: [{name: m, handler: 'h.py:H', priority_levels: 4, default_priority_level: 3}]"


@pytest.mark.parametrize("value", [0, 1, 4, "2", " 3 "])
def test_priorities_within_the_models_levels_are_taken(value: object) -> None:
    model = parse_config(MODEL).models[0]
    assert check_priority(value, "the X-Priority header", model) == int(str(value))


@pytest.mark.parametrize("value", [5, -1, "high", "", True, 1.5, "1" * 40])
def test_other_priorities_are_a_400_naming_the_value_and_the_range(value: object) -> None:
    model = parse_config(MODEL).models[0]
    with pytest.raises(BadRequest) as caught:
        check_priority(value, "parameters.priority", model)
    message = caught.value.message
    assert message.startswith("parameters.priority: ") and repr(value)[:20] in message
    assert "from 1 (highest) to 4 (lowest), or 0 for the model's default (3)" in message


def test_the_promotion_limit_defaults_to_half_the_deadline_at_most_a_second() -> None:
    def policy(extra: str) -> PriorityPolicy:
        return priority_policy(parse_config(f"models: [{{name: m, handler: 'h.py:H'{extra}}}]").models[0])

    assert policy("").promote_after_s == 1.0
    assert policy(", request_timeout_ms: 400").promote_after_s == 0.2
    assert policy(", priority_promote_after_ms: 250").promote_after_s == 0.25
    assert policy("").level(0) == 2 and policy("").level(9) == 3
