"""Room kept for urgent requests: the cost table and the policy alone (explicit times and costs),
then the batcher keeping a worker for them on a real event loop with in-memory workers."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from inferd.batch_cost import BatchCost
from inferd.batching import Batcher, BatchPolicy
from inferd.messages import Batch, BatchDone
from inferd.priority import PriorityPolicy
from inferd.priority_queue import PROMOTED
from inferd.urgent_reserve import MIN_RECENT_S, RECENT_GAPS, UrgentReserve
from tests.test_batching import FakePool, Observer
from tests.test_priority_queue import GatedWorker, until

URGENT, LOW = 1, 3


def alone() -> int:
    return 1  # the request just arrived is the only one of its level in the model


def cost_of(**sizes_s: float) -> BatchCost:
    cost = BatchCost()
    for size, seconds in sizes_s.items():
        cost.observe(int(size.lstrip("n")), seconds)
    return cost


def test_each_size_keeps_its_own_mean_and_sizes_between_are_interpolated() -> None:
    cost = cost_of(n1=0.010, n4=0.040)
    for _ in range(500):  # a flood of full batches does not wash out what a batch of one costs
        cost.observe(4, 0.040)
    assert cost.estimate_s(1) == 0.010 and cost.estimate_s(4) == 0.040
    assert math.isclose(cost.estimate_s(2) or 0, 0.020) and math.isclose(cost.estimate_s(3) or 0, 0.030)
    assert cost.estimate_s(5) is None and BatchCost().estimate_s(1) is None


def test_the_most_items_within_a_budget_stops_at_the_first_unknown_or_too_dear_size() -> None:
    cost = cost_of(n1=0.040, n2=0.041, n4=0.048)
    assert cost.largest_within(1, 8, 0.042) == 2
    assert cost.largest_within(1, 8, 1.0) == 4  # 5 is not measured
    assert cost.largest_within(1, 8, 0.030) == 1


def test_the_urgent_level_is_the_highest_of_two_seen_lately_and_a_slow_trickle_stays_urgent() -> None:
    reserve = UrgentReserve(BatchCost(), 4)
    assert reserve.urgent_level(0.0) is None
    reserve.request_arrived(LOW, 1, 0.0, alone)
    assert reserve.urgent_level(0.0) is None  # one level alone: nothing to keep room for
    reserve.request_arrived(URGENT, 1, 0.0, alone)
    assert reserve.urgent_level(0.5) == URGENT
    assert reserve.urgent_level(MIN_RECENT_S + 0.1) is None  # both gone quiet
    for second in range(1, 6):  # one urgent and one low request a second
        reserve.request_arrived(URGENT, 1, float(second), alone)
        reserve.request_arrived(LOW, 1, float(second), alone)
    assert reserve.urgent_level(5.0 + RECENT_GAPS * 0.9) == URGENT
    assert reserve.urgent_level(5.0 + RECENT_GAPS * 1.1) is None


def test_only_levels_below_the_urgent_one_yield_and_promoted_requests_never() -> None:
    reserve = UrgentReserve(BatchCost(), 4)
    assert reserve.yields(LOW, URGENT) and reserve.yields(2, URGENT)
    assert not reserve.yields(URGENT, URGENT) and not reserve.yields(PROMOTED, URGENT)
    assert not reserve.yields(LOW, None)


def test_lower_requests_ride_an_urgent_batch_only_where_they_barely_slow_it() -> None:
    assert UrgentReserve(cost_of(n1=0.040, n4=0.040), 4).fill_limit(1) == 4  # a flat cost
    assert UrgentReserve(cost_of(n1=0.042, n4=0.048), 4).fill_limit(1) == 2  # 40 ms + 2 ms per item
    assert UrgentReserve(cost_of(n1=0.015, n4=0.045), 4).fill_limit(1) == 1  # 10 ms per item
    assert UrgentReserve(cost_of(n4=0.040), 4).fill_limit(1) == 1  # one alone never measured: measure it


def reserve_with_urgent(cost: BatchCost) -> UrgentReserve:
    reserve = UrgentReserve(cost, 4)
    reserve.request_arrived(LOW, 1, 0.0, alone)
    reserve.request_arrived(URGENT, 1, 0.0, alone)
    return reserve


def test_a_lower_batch_waits_until_a_worker_is_due_to_free_within_a_share_of_an_urgent_batch() -> None:
    reserve = reserve_with_urgent(cost_of(n1=0.040, n4=0.048))  # budget: a quarter of 40 ms

    def look(finishes: list[float | None], other_idle: bool = False) -> float | None:
        return reserve.look_again_at(URGENT, 0.0, finishes, other_idle, urgent_in_model=0)

    assert look([]) is None  # nothing in flight
    assert look([0.100], other_idle=True) is None  # another worker is free
    assert look([0.100, 0.009]) is None  # one frees soon
    assert math.isclose(look([0.100, 0.048]) or 0, 0.038)
    assert look([None]) == math.inf  # at the next answer


def test_room_is_kept_for_as_many_urgent_requests_as_came_together_since_the_level_went_quiet() -> None:
    reserve = reserve_with_urgent(cost_of(n1=0.040, n4=0.048))
    assert reserve.look_again_at(URGENT, 0.0, [0.100], False, urgent_in_model=1) is None  # one at a time
    reserve.request_arrived(URGENT, 1, 0.1, lambda: 2)  # two in the model at once
    reserve.request_arrived(URGENT, 1, 0.2, alone)
    assert reserve.look_again_at(URGENT, 0.2, [0.300], False, urgent_in_model=1) is not None
    assert reserve.look_again_at(URGENT, 0.2, [0.300], False, urgent_in_model=2) is None
    reserve.request_arrived(URGENT, 1, 60.0, alone)  # after a quiet minute: counted afresh
    assert reserve.look_again_at(URGENT, 60.0, [60.1], False, urgent_in_model=1) is None


def test_without_a_measured_urgent_batch_nothing_is_held_back() -> None:
    reserve = reserve_with_urgent(cost_of(n4=0.048))
    assert reserve.look_again_at(URGENT, 0.0, [0.048], False, urgent_in_model=0) is None


class Gated(GatedWorker):
    """Answers when its gate opens, reporting the compute time its batch would have taken."""

    def __init__(self, name: str, fixed_s: float, per_item_s: float) -> None:
        super().__init__()
        self.name, self.fixed_s, self.per_item_s = name, fixed_s, per_item_s

    def _finish(self, batch: Batch, future: asyncio.Future[BatchDone]) -> None:
        self.busy = False
        future.set_result(
            BatchDone(batch.batch_id, batch.payloads, self.fixed_s + self.per_item_s * len(batch.payloads))
        )
        self.on_free()


def make(workers: list[Gated]) -> Batcher:
    """A batcher that knows its workers' batch times already (from batches of one and of four)."""
    policy = BatchPolicy(4, 0.0, 100, 30.0, priority=PriorityPolicy(3, 2, 60.0))
    batcher = Batcher("m", policy, FakePool(list(workers)), Observer(), lambda worker, reason: None)  # type: ignore[arg-type]
    for items in (1, 4):
        batcher.cost.observe(items, workers[0].fixed_s + workers[0].per_item_s * items)
    for worker in workers:
        worker.on_free = batcher.wake
    batcher.start()
    return batcher


def served(worker: Gated) -> list[list[Any]]:
    return [[item for payload in batch.payloads for item in payload] for batch in worker.batches]


def send(batcher: Batcher, name: str, priority: int) -> asyncio.Future[Any]:
    return asyncio.ensure_future(batcher.infer([name], 1, None, priority))


async def settle(batcher: Batcher) -> None:
    """Let the batcher act on what it was just given (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def two_urgent_at_once(batcher: Batcher, a: Gated, b: Gated) -> None:
    """Two urgent requests in the model together beside a lower one, all answered: room is kept
    for two urgent requests from now on."""
    a.gate.set()
    b.gate.set()
    sent = [send(batcher, "low", LOW), send(batcher, "u", URGENT), send(batcher, "u", URGENT)]
    await asyncio.wait_for(asyncio.gather(*sent), 5)
    a.gate.clear()
    b.gate.clear()


async def test_a_worker_is_kept_free_for_urgent_requests_beside_a_flood() -> None:
    a, b = Gated("a", 0.0, 10.0), Gated("b", 0.0, 10.0)  # batches that run for seconds, 10 s per item
    batcher = make([a, b])
    await two_urgent_at_once(batcher, a, b)
    tasks = [send(batcher, "urgent1", URGENT)]
    await until(lambda: a.busy)
    tasks += [send(batcher, f"low{n}", LOW) for n in range(6)]
    await until(lambda: batcher.queue_depth == 6)
    await settle(batcher)
    assert not b.busy  # kept for urgent work though six lower requests wait
    tasks.append(send(batcher, "urgent2", URGENT))
    await until(lambda: b.busy)
    assert served(b)[-1] == ["urgent2"]  # at once, and alone: lower ones would make it slower
    a.gate.set()
    b.gate.set()
    answers = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert sorted(answer[0] for answer in answers) == sorted(["urgent1", "urgent2", *(f"low{n}" for n in range(6))])
    await batcher.stop()


async def test_a_held_lower_batch_starts_once_a_running_batch_is_nearly_due() -> None:
    a, b = Gated("a", 0.05, 0.0), Gated("b", 0.05, 0.0)  # due 50 ms after it starts: the low batch goes before
    batcher = make([a, b])
    await two_urgent_at_once(batcher, a, b)
    tasks = [send(batcher, "urgent", URGENT)]
    await until(lambda: a.busy)
    tasks += [send(batcher, f"low{n}", LOW) for n in range(4)]
    await until(lambda: b.busy)
    assert a.busy and served(b)[-1] == ["low0", "low1", "low2", "low3"]
    a.gate.set()
    b.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await batcher.stop()


async def test_a_single_worker_is_never_kept_idle_for_urgent_requests() -> None:
    worker = Gated("only", 0.0, 10.0)
    batcher = make([worker])
    tasks = [send(batcher, "urgent", URGENT)]
    await until(lambda: worker.busy)
    tasks += [send(batcher, f"low{n}", LOW) for n in range(3)]
    await until(lambda: batcher.queue_depth == 3)
    worker.gate.set()  # the urgent batch ends: nothing in flight, so the lower ones go
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert served(worker) == [["urgent"], ["low0", "low1", "low2"]]
    await batcher.stop()


async def test_without_urgent_requests_lately_lower_ones_take_every_worker() -> None:
    a, b = Gated("a", 0.0, 10.0), Gated("b", 0.0, 10.0)
    batcher = make([a, b])
    tasks = [send(batcher, f"low{n}", LOW) for n in range(5)]
    await until(lambda: a.busy and b.busy)
    assert served(a) + served(b) == [["low0", "low1", "low2", "low3"], ["low4"]]
    a.gate.set()
    b.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await batcher.stop()


async def test_a_client_sending_one_urgent_request_at_a_time_gets_room_only_between_its_requests() -> None:
    a, b = Gated("a", 0.0, 10.0), Gated("b", 0.0, 10.0)
    batcher = make([a, b])
    first = send(batcher, "urgent1", URGENT)
    await until(lambda: a.busy)
    tasks = [send(batcher, f"low{n}", LOW) for n in range(6)]
    await until(lambda: b.busy)  # the one urgent request is running: nothing more is expected
    assert served(b) == [["low0", "low1", "low2", "low3"]]
    a.gate.set()
    await asyncio.wait_for(first, 5)
    await settle(batcher)
    a.gate.clear()
    assert batcher.queue_depth == 2 and not a.busy  # answered: room again for its next one
    tasks.append(send(batcher, "urgent2", URGENT))
    await until(lambda: a.busy)
    assert served(a)[-1] == ["urgent2"]
    a.gate.set()
    b.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await batcher.stop()
