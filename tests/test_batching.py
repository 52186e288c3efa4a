"""The batcher alone, on a real event loop, with in-memory workers standing in for processes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from inferd.batching import HEADS_UP_LEAD_S, Batcher, BatchPolicy
from inferd.errors import BadRequest, ModelFailed, ModelUnavailable, QueueFull, RequestTimedOut
from inferd.messages import Batch, BatchDone, RequestFailure
from inferd.supervisor import WorkerLost


class FakeWorker:
    """Answers each batch after `delay_s` by echoing payloads, unless told to fail."""

    def __init__(self, name: str, delay_s: float = 0.0) -> None:
        self.name = name
        self.delay_s = delay_s
        self.batches: list[Batch] = []
        self.busy = False
        self.lost = False
        self.on_free: Any = None
        self.heads_ups: list[tuple[float, float]] = []  # (when, within_s)

    def heads_up(self, within_s: float) -> None:
        self.heads_ups.append((time.monotonic(), within_s))

    def submit(self, batch: Batch) -> asyncio.Future[BatchDone]:
        self.batches.append(batch)
        self.busy = True
        future: asyncio.Future[BatchDone] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(self.delay_s, self._finish, batch, future)
        return future

    def _finish(self, batch: Batch, future: asyncio.Future[BatchDone]) -> None:
        self.busy = False
        if self.lost:
            future.set_exception(WorkerLost(f"worker {self.name} exited"))
        else:
            results = [RequestFailure("ValueError", "bad item") if p == ["bad"] else p for p in batch.payloads]
            future.set_result(BatchDone(batch.batch_id, results, 0.001))
        self.on_free()


class FakePool:
    def __init__(self, workers: list[FakeWorker]) -> None:
        self.workers = workers
        self.unavailable_reason: str | None = None

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers if not w.lost)

    @property
    def idle_slots(self) -> int:
        return sum(1 for w in self.workers if not w.busy and not w.lost)

    def idle_worker(self) -> FakeWorker | None:
        return next((w for w in self.workers if not w.busy and not w.lost), None)


class Observer:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.cancelled = 0
        self.worker_waits_s: list[float] = []
        self.batch_waits_s: list[float] = []

    def batch_dispatched(self, items: int, worker_waits_s: list[float], batch_waits_s: list[float]) -> None:
        self.batch_sizes.append(items)
        self.worker_waits_s += worker_waits_s
        self.batch_waits_s += batch_waits_s

    def batch_done(self, compute_s: float, items: int = 1, requests: int = 1) -> None:
        pass

    def request_cancelled(self) -> None:
        self.cancelled += 1


def make(workers: list[FakeWorker], **policy: float | None) -> tuple[Batcher, Observer, FakePool]:
    settings = {"max_batch_size": 4, "batch_timeout_s": 0.05, "max_queue_size": 100, "request_timeout_s": 5.0} | policy
    pool, observer = FakePool(workers), Observer()
    batcher = Batcher("m", BatchPolicy(**settings), pool, observer, lambda worker, reason: None)  # type: ignore[arg-type]
    for worker in workers:
        worker.on_free = batcher.wake
    batcher.start()
    return batcher, observer, pool


def dies_with_its_first_batch(worker: FakeWorker) -> None:
    """The worker takes a batch and is lost before it answers (its process died)."""
    original_submit = worker.submit

    def submit_then_die(batch: Batch) -> asyncio.Future[BatchDone]:
        future = original_submit(batch)
        worker.lost = True
        return future

    worker.submit = submit_then_die  # type: ignore[method-assign]


async def infer(batcher: Batcher, item: Any, key: Any = None) -> Any:
    return await batcher.infer([item], 1, key)


async def test_a_full_batch_leaves_at_once() -> None:
    worker = FakeWorker("w", delay_s=0.01)
    batcher, observer, _ = make([worker], batch_timeout_s=10.0)
    results = await asyncio.wait_for(asyncio.gather(*(infer(batcher, n) for n in range(4))), 2.0)
    assert results == [[0], [1], [2], [3]] and observer.batch_sizes == [4]
    await batcher.stop()


async def test_a_lone_request_with_an_idle_worker_leaves_at_once_whatever_the_timeout() -> None:
    batcher, observer, _ = make([FakeWorker("w")], batch_timeout_s=10.0)
    assert await asyncio.wait_for(infer(batcher, "alone"), 2.0) == ["alone"]
    assert observer.batch_sizes == [1] and observer.batch_waits_s == [0.0]
    await batcher.stop()


async def test_requests_gather_while_the_worker_is_busy_and_leave_together() -> None:
    worker = FakeWorker("w", delay_s=0.05)
    batcher, observer, _ = make([worker], max_batch_size=8, batch_timeout_s=None)
    first = asyncio.ensure_future(infer(batcher, "first"))
    await asyncio.sleep(0.01)  # dispatched alone; the worker is now busy
    later = [asyncio.ensure_future(infer(batcher, n)) for n in range(5)]
    assert await asyncio.wait_for(asyncio.gather(first, *later), 2.0) == [["first"], *[[n] for n in range(5)]]
    assert observer.batch_sizes == [1, 5]
    assert min(observer.worker_waits_s[1:]) > 0 and observer.batch_waits_s == [0.0] * 6
    await batcher.stop()


def teach_a_flat_cost(batcher: Batcher, fixed_s: float, arrivals_per_s: float) -> None:
    """Give the batcher's window the history of a model whose batches cost `fixed_s` whatever
    their size, under a steady arrival rate: the case where holding a partial batch pays."""
    for items in range(1, 17):
        batcher.window.batch_done(items, fixed_s)
    now = time.monotonic()  # the batcher's clock: the next real arrival continues the series
    for n in range(50, 0, -1):
        batcher.window.request_arrived(now - n / arrivals_per_s)


async def test_a_partial_batch_is_held_when_its_model_has_learned_that_it_pays() -> None:
    worker = FakeWorker("w")
    batcher, observer, _ = make([worker], max_batch_size=8, batch_timeout_s=None)
    teach_a_flat_cost(batcher, fixed_s=0.2, arrivals_per_s=20.0)  # hold: min(7 / 20, 0.1) = 0.1 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(infer(batcher, "x"), 2.0) == ["x"]
    assert loop.time() - started >= 0.09
    assert observer.batch_waits_s[0] >= 0.09 > observer.worker_waits_s[0]  # it waited for company, not a worker
    await batcher.stop()


async def test_batch_timeout_caps_a_learned_hold() -> None:
    batcher, observer, _ = make([FakeWorker("w")], max_batch_size=8, batch_timeout_s=0.0)
    teach_a_flat_cost(batcher, fixed_s=0.2, arrivals_per_s=20.0)
    assert await asyncio.wait_for(infer(batcher, "x"), 2.0) == ["x"]
    assert observer.batch_waits_s == [0.0]
    await batcher.stop()


async def test_batches_never_mix_keys_and_never_exceed_the_limit() -> None:
    worker = FakeWorker("w", delay_s=0.02)
    batcher, observer, _ = make([worker], max_batch_size=3, batch_timeout_s=0.01)
    await asyncio.gather(*(infer(batcher, n, key=n % 2) for n in range(10)))
    for batch in worker.batches:
        assert len({item[0] % 2 for item in batch.payloads}) == 1
    assert max(observer.batch_sizes) <= 3 and sum(observer.batch_sizes) == 10
    await batcher.stop()


async def test_a_request_with_more_items_than_a_batch_is_refused() -> None:
    batcher, _, _ = make([FakeWorker("w")], max_batch_size=2)
    with pytest.raises(BadRequest, match="at most 2 per batch"):
        await batcher.infer([1, 2, 3], 3, None)
    await batcher.stop()


async def test_a_full_queue_refuses_at_once() -> None:
    worker = FakeWorker("w", delay_s=0.5)
    batcher, _, _ = make([worker], max_batch_size=1, max_queue_size=2, batch_timeout_s=0.0)
    first = asyncio.ensure_future(infer(batcher, 0))
    await asyncio.sleep(0.01)  # the first is dispatched; the next two wait in the queue
    queued = [asyncio.ensure_future(infer(batcher, n)) for n in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await infer(batcher, 3)
    assert await asyncio.gather(first, *queued) == [[0], [1], [2]]
    await batcher.stop()


async def test_an_expired_queued_request_gets_504_and_is_never_computed() -> None:
    worker = FakeWorker("w", delay_s=0.3)
    batcher, _, _ = make([worker], max_batch_size=1, batch_timeout_s=0.0, request_timeout_s=0.1)
    first = asyncio.ensure_future(infer(batcher, "first"))
    await asyncio.sleep(0.01)
    with pytest.raises(RequestTimedOut):
        await infer(batcher, "late")
    with pytest.raises(RequestTimedOut):
        await first  # its batch outlived the timeout too
    await asyncio.sleep(0.4)
    assert [b.payloads for b in worker.batches] == [[["first"]]]
    await batcher.stop()


async def test_a_lost_batch_is_retried_once_on_another_worker() -> None:
    doomed, healthy = FakeWorker("doomed", delay_s=0.01), FakeWorker("healthy", delay_s=0.01)
    batcher, _, _ = make([doomed, healthy], max_batch_size=2, batch_timeout_s=0.0)
    dies_with_its_first_batch(doomed)
    assert await asyncio.wait_for(infer(batcher, "x"), 2.0) == ["x"]
    assert len(doomed.batches) == 1 and len(healthy.batches) == 1
    await batcher.stop()


async def test_a_lost_batch_with_no_other_worker_fails_503_at_once() -> None:
    worker = FakeWorker("only", delay_s=0.01)
    batcher, _, _ = make([worker], batch_timeout_s=0.0)
    dies_with_its_first_batch(worker)
    with pytest.raises(ModelUnavailable, match="exited"):
        await asyncio.wait_for(infer(batcher, "x"), 2.0)
    await batcher.stop()


async def test_one_bad_request_fails_alone() -> None:
    batcher, _, _ = make([FakeWorker("w", delay_s=0.01)], batch_timeout_s=0.05)
    results = await asyncio.gather(infer(batcher, "good"), infer(batcher, "bad"), return_exceptions=True)
    assert results[0] == ["good"]
    assert isinstance(results[1], ModelFailed) and "bad item" in results[1].message
    await batcher.stop()


async def test_a_cancelled_wait_leaves_the_queue_and_a_running_batch_finishes() -> None:
    worker = FakeWorker("w", delay_s=0.2)
    batcher, observer, _ = make([worker], max_batch_size=1, batch_timeout_s=0.0)
    running = asyncio.ensure_future(infer(batcher, "running"))
    while not worker.batches:
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(infer(batcher, f"queued {n}")) for n in range(3)]
    kept = asyncio.ensure_future(infer(batcher, "kept"))
    while batcher.queue_depth < 4:
        await asyncio.sleep(0.001)
    for task in [running, *queued]:
        task.cancel()
    await asyncio.gather(running, *queued, return_exceptions=True)
    assert batcher.queue_depth == 1 and observer.cancelled == 3  # the running one is not withdrawn
    assert await kept == ["kept"]
    assert [batch.payloads for batch in worker.batches] == [[["running"]], [["kept"]]]
    assert batcher.inflight_requests == 0
    await batcher.stop()


async def test_a_fixed_wait_holds_every_partial_batch_for_the_timeout() -> None:
    batcher, observer, _ = make([FakeWorker("w")], batch_timeout_s=0.1, fixed_wait=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await infer(batcher, "alone") == ["alone"]
    assert loop.time() - started >= 0.09 and observer.batch_sizes == [1]
    assert observer.batch_waits_s[0] >= 0.09
    await batcher.stop()


async def test_a_stopped_batcher_refuses_at_once_rather_than_queue() -> None:
    batcher, _, _ = make([FakeWorker("w")])
    await batcher.stop()
    with pytest.raises(ModelUnavailable, match="shutting down"):
        await asyncio.wait_for(infer(batcher, "x"), 2.0)


async def test_a_heads_up_reaches_the_idle_worker_shortly_before_the_expected_request() -> None:
    worker = FakeWorker("w", delay_s=0.05)
    batcher, _, _ = make([worker], busy_poll_s=0.001)
    asked = time.monotonic()
    batcher.expect(0.03)  # a step before this one is due to end in 30 ms
    await asyncio.sleep(0.01)
    assert worker.heads_ups == []  # never early: the worker would poll for nothing
    while not worker.heads_ups and time.monotonic() - asked < 5:
        await asyncio.sleep(0.001)
    ((when, within_s),) = worker.heads_ups
    assert when - asked >= 0.03 - HEADS_UP_LEAD_S
    assert within_s == pytest.approx(HEADS_UP_LEAD_S + 0.001)  # the lead, then the model's poll window
    await batcher.stop()


async def test_no_heads_up_while_polling_is_off_or_a_batch_is_on_its_way() -> None:
    quiet = FakeWorker("quiet")
    batcher, _, _ = make([quiet], busy_poll_s=0.0)
    batcher.expect(0.0)
    await asyncio.sleep(0.02)
    assert quiet.heads_ups == []  # busy_poll_us: 0 turns heads-ups off with the rest of polling
    await batcher.stop()

    busy = FakeWorker("busy", delay_s=0.2)
    batcher, _, _ = make([busy], busy_poll_s=0.001)
    running = asyncio.ensure_future(infer(batcher, "running"))
    while not busy.batches:
        await asyncio.sleep(0.001)
    batcher.expect(0.0)  # no idle worker to tell
    await asyncio.sleep(0.02)
    assert busy.heads_ups == []
    assert await running == ["running"]
    await batcher.stop()
