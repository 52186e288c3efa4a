"""The learned batch-size cap: alone under a steady deep queue, then inside the batcher on a real loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from inferd.batch_cap import BatchSizeCap
from inferd.batching import Batcher, BatchPolicy
from inferd.messages import Batch, BatchDone

Curve = Callable[[int], float]  # seconds a batch of n items takes


def rising(items: int) -> float:
    """EfficientNet-Lite0 on one CPU core: 25 ms an image up to 4, then dearer per image."""
    per_item_ms = {1: 25, 2: 25, 4: 25, 8: 36, 16: 46, 32: 71}
    bucket = next(b for b in sorted(per_item_ms) if b >= items)
    return items * per_item_ms[bucket] / 1000


def gently_rising(items: int) -> float:
    """Dearer per item by about a sixth at each doubling from 4 (as EfficientNet-Lite0 on a core
    shared with another step): no single step down gains a fifth."""
    per_item_ms = {1: 40, 2: 40, 4: 40, 8: 47, 16: 55, 32: 65}
    bucket = next(b for b in sorted(per_item_ms) if b >= items)
    return items * per_item_ms[bucket] / 1000


def mostly_fixed(items: int) -> float:
    return 0.0004 + 0.00001 * items  # a tiny model: the round trip is the cost


def falling_per_item(items: int) -> float:
    return 0.002 + 0.0008 * items * (1 - items / 128)  # GEMM: fuller batches use the cores better


def flat(items: int) -> float:
    return 0.025 * items


def run_loaded(cap: BatchSizeCap, curve: Curve, batches: int) -> list[int]:
    """Batches taken from a queue always deeper than one batch; their sizes."""
    sizes = []
    for _ in range(batches):
        size = min(cap.limit(), cap.max_batch_size)
        cap.observe(size, curve(size))
        sizes.append(size)
    return sizes


def test_cap_moves_down_where_bigger_batches_cost_more_per_item() -> None:
    cap = BatchSizeCap(32)
    sizes = run_loaded(cap, rising, 600)
    assert cap.cap == 4
    assert sizes[-100:].count(4) >= 90  # probes aside, it runs batches of 4


def test_cap_follows_a_gently_rising_curve_down_to_its_cheapest_bucket() -> None:
    cap = BatchSizeCap(32)
    sizes = run_loaded(cap, gently_rising, 600)
    assert cap.cap == 4
    assert sizes[-100:].count(4) >= 90


def test_the_first_batch_of_each_size_paying_one_off_costs_does_not_hold_the_cap_up() -> None:
    seen: set[int] = set()

    def cold_first(items: int) -> float:  # each new shape's first run is thrice as slow
        cost = gently_rising(items) * (1 if items in seen else 3)
        seen.add(items)
        return cost

    cap = BatchSizeCap(32)
    run_loaded(cap, cold_first, 600)
    assert cap.cap == 4


def test_cap_stays_at_max_for_mostly_fixed_and_falling_costs() -> None:
    for curve in (mostly_fixed, falling_per_item):
        cap = BatchSizeCap(32)
        sizes = run_loaded(cap, curve, 600)
        assert cap.cap == 32, curve.__name__
        assert sizes[-320:].count(32) >= 300  # probes grow rarer: one batch in 32 at most


def test_cap_stays_at_max_for_a_max_that_is_not_a_power_of_two() -> None:
    cap = BatchSizeCap(24)
    run_loaded(cap, mostly_fixed, 300)
    assert cap.buckets == [1, 2, 4, 8, 16, 24]
    assert cap.cap == 24


def test_probing_brings_the_cap_back_when_the_curve_changes() -> None:
    cap = BatchSizeCap(32)
    run_loaded(cap, rising, 600)
    assert cap.cap == 4
    run_loaded(cap, flat, 3000)  # e.g. what evicted it from the cache stopped
    assert cap.cap == 32


def test_noise_of_a_tenth_does_not_cap_a_flat_curve() -> None:
    cap = BatchSizeCap(32)
    jitter = [1.1, 0.9, 1.0, 1.1, 0.9, 0.95, 1.05]
    for i in range(2000):
        size = cap.limit()
        cap.observe(size, size * 0.001 * jitter[i % len(jitter)])
        assert cap.cap >= 16


def test_small_batches_alone_under_light_traffic_do_not_cap() -> None:
    cap = BatchSizeCap(32)
    for _ in range(20):
        cap.observe(1, mostly_fixed(1))
        cap.observe(2, mostly_fixed(2))
    assert cap.cap == 32
    assert run_loaded(cap, mostly_fixed, 100)[-32:].count(32) >= 31  # a probe in 32 batches at most


def test_no_cap_before_anything_is_measured() -> None:
    cap = BatchSizeCap(32)
    assert cap.limit() == 32
    cap.observe(1, 1.0)  # one slow batch of one says nothing yet
    assert cap.limit() == 32


class CurveWorker:
    """Answers each batch at once, reporting the compute time `curve` gives its size."""

    def __init__(self, name: str, curve: Curve, pool: CurvePool) -> None:
        self.name = name
        self._curve = curve
        self._cpu_curve = pool.cpu_curve
        self._pool = pool
        self.busy = False

    def submit(self, batch: Batch) -> asyncio.Future[BatchDone]:
        self.busy = True
        self._pool.sizes.append(len(batch.payloads))
        future: asyncio.Future[BatchDone] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(self._finish, batch, future)
        return future

    def _finish(self, batch: Batch, future: asyncio.Future[BatchDone]) -> None:
        self.busy = False
        items = len(batch.payloads)
        cpu_s = None if self._cpu_curve is None else self._cpu_curve(items)
        future.set_result(BatchDone(batch.batch_id, list(batch.payloads), self._curve(items), cpu_s=cpu_s))


class CurvePool:
    def __init__(self, curve: Curve, workers: int, cpu_curve: Curve | None = None) -> None:
        self.sizes: list[int] = []
        self.cpu_curve = cpu_curve  # the CPU time the workers report beside the wall time, if any
        self.workers = [CurveWorker(f"w{i}", curve, self) for i in range(workers)]
        self.unavailable_reason: str | None = None
        self.ready_count = workers

    @property
    def idle_slots(self) -> int:
        return sum(1 for w in self.workers if not w.busy)

    def idle_worker(self) -> CurveWorker | None:
        return next((w for w in self.workers if not w.busy), None)


class QuietObserver:
    def batch_dispatched(self, items: int, worker_waits_s: list[float], batch_waits_s: list[float]) -> None: ...
    def batch_done(self, compute_s: float, items: int = 1, requests: int = 1) -> None: ...
    def request_cancelled(self) -> None: ...
    def requests_promoted(self, count: int) -> None: ...


async def closed_loop(
    curve: Curve,
    clients: int,
    requests_each: int,
    after: Callable[[Batcher], Awaitable[None]] | None = None,
    cpu_curve: Curve | None = None,
) -> tuple[Batcher, list[int]]:
    """`clients` each send `requests_each` requests one after another; every answer is checked."""
    pool = CurvePool(curve, workers=2, cpu_curve=cpu_curve)
    batcher = Batcher("m", BatchPolicy(32, None, 1000, 30.0), pool, QuietObserver(), lambda w, r: None)
    batcher.start()

    async def client(index: int) -> None:
        for n in range(requests_each):
            payload = [f"{index}-{n}"]
            assert await batcher.infer(payload, 1, key="k") == payload

    try:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), timeout=60)
        if after is not None:
            await after(batcher)
    finally:
        await batcher.stop()
    return batcher, pool.sizes


async def test_batcher_runs_capped_batches_and_loses_no_request() -> None:
    batcher, sizes = await closed_loop(rising, clients=64, requests_each=80)
    assert batcher.size_cap.cap == 4
    assert sum(sizes) == 64 * 80
    assert max(sizes[-200:]) <= 8  # the cap, and now and then a probe at the next bucket up


async def test_batcher_keeps_full_batches_for_a_mostly_fixed_cost() -> None:
    batcher, sizes = await closed_loop(mostly_fixed, clients=64, requests_each=80)
    assert batcher.size_cap.cap == 32
    assert sum(sizes) == 64 * 80


async def test_a_request_larger_than_the_cap_goes_whole() -> None:
    answers = []

    async def send_sixteen(batcher: Batcher) -> None:
        assert batcher.size_cap.cap == 4
        answers.append(await asyncio.wait_for(batcher.infer(["x"] * 16, 16, key="k"), timeout=10))

    await closed_loop(rising, clients=64, requests_each=80, after=send_sixteen)
    assert answers == [["x"] * 16]


async def test_the_cap_follows_the_cpu_time_where_the_worker_reports_it() -> None:
    # A worker sharing its core with other processes (a pipeline's other steps) reports wall times
    # that their slices inflate; its own CPU time is what a batch size costs.
    batcher, _ = await closed_loop(mostly_fixed, clients=64, requests_each=80, cpu_curve=rising)
    assert batcher.size_cap.cap == 4
    batcher, _ = await closed_loop(rising, clients=64, requests_each=80, cpu_curve=mostly_fixed)
    assert batcher.size_cap.cap == 32
