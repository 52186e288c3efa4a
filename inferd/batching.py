"""One model's bounded queue, dynamic batcher and dispatch, in pure asyncio (no processes).

Rules:
- admission: at most `max_queue_size` requests wait; past that a request fails at once (429);
- the queue is ordered by priority, FIFO within a level, and a request that has waited past the
  model's promotion limit goes ahead of those that have not (priority_queue.py);
- a batch forms only when a worker is idle: up to `max_batch_size` items from the head of the queue
  (fewer while a smaller batch is clearly cheaper per item: batch_cap.py), only requests whose
  batch key (names, dtypes and non-batch shapes) matches the head's, in order;
- a batch leaves at once, unless its model's learned `BatchWindow` says a short hold for company
  pays (see batch_window.py); never past `batch_timeout_s` from its oldest request when that is set;
- a request whose deadline passes is answered 504 at once; if still queued it is never computed;
- a request whose wait is cancelled (its client left) leaves the queue and is never computed; if its
  batch is already running, the batch finishes and its answer for that request is dropped;
- while urgent requests arrive beside lower ones, room is kept for them: a lower batch may wait
  for a worker to be nearly free, and an urgent batch takes lower requests along only where that
  barely slows it (urgent_reserve.py);
- a batch whose worker is lost is retried once on another ready worker, else fails with 503;
- a batch still running after `request_timeout_s` gets its worker replaced.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from inferd.batch_cap import BatchSizeCap
from inferd.batch_cost import BatchCost
from inferd.batch_window import BatchWindow
from inferd.busy_poll import LoopSpinner
from inferd.errors import BadRequest, ModelFailed, ModelUnavailable, QueueFull, RequestError, RequestTimedOut
from inferd.messages import Batch, BatchDone, Payload, RequestFailure
from inferd.priority import PriorityPolicy
from inferd.priority_queue import PROMOTED, PriorityQueue
from inferd.urgent_reserve import UrgentReserve

log = logging.getLogger(__name__)
LOOP_SPINNER = LoopSpinner()  # one for every model's batcher: the process has one event loop
# How long before a request expected here a heads-up goes to the idle worker: about what waking a
# sleeping worker takes on a virtual machine's halted CPU (busy_poll.py), with room to spare.
HEADS_UP_LEAD_S = 300e-6


class Worker(Protocol):
    name: str

    def submit(self, batch: Batch) -> asyncio.Future[BatchDone]: ...

    def heads_up(self, within_s: float) -> None:
        """Tell it a batch is due within about `within_s` (it polls for it instead of sleeping)."""


class WorkerPool(Protocol):
    """What the batcher needs of a model's workers (the supervisor's ModelWorkers provides it)."""

    @property
    def ready_count(self) -> int: ...

    @property
    def unavailable_reason(self) -> str | None: ...

    @property
    def idle_slots(self) -> int:
        """How many more batches the ready workers would take now."""

    def idle_worker(self) -> Worker | None: ...


class BatchObserver(Protocol):
    def batch_dispatched(self, items: int, worker_waits_s: list[float], batch_waits_s: list[float]) -> None:
        """Each request's queue time split in two: waiting for a free worker, then (with one idle)
        waiting for its batch to fill."""

    def batch_done(self, compute_s: float, items: int = 1, requests: int = 1) -> None: ...

    def request_cancelled(self) -> None: ...

    def requests_promoted(self, count: int) -> None:
        """Requests that waited past the promotion limit and went ahead of the rest."""


class ModelError(RequestError):
    """The model failed on a batch whatever its input: the server's fault, not the caller's."""

    status = 500


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    batch_timeout_s: float | None  # the longest a partial batch may hold; None: as long as it pays
    max_queue_size: int
    request_timeout_s: float
    fixed_wait: bool = False  # the classic dynamic batcher: every partial batch waits batch_timeout_s
    busy_poll_s: float = 0.0  # the window the loop stays awake in, around a batch's expected answer (busy_poll.py)
    priority: PriorityPolicy = field(default_factory=PriorityPolicy)


@dataclass(eq=False)
class PendingRequest:
    payload: Payload
    items: int
    key: Hashable
    arrived: float
    future: asyncio.Future[Payload]
    level: int  # its priority level in the queue (priority_queue.py)
    attempts: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Batcher:
    def __init__(
        self,
        model: str,
        policy: BatchPolicy,
        pool: WorkerPool,
        observer: BatchObserver,
        replace_worker: Callable[[Worker, str], None],
    ) -> None:
        self.model = model
        self.policy = policy
        self._pool = pool
        self._observer = observer
        self._replace_worker = replace_worker
        self._queue: PriorityQueue[PendingRequest] = PriorityQueue(
            policy.priority.levels, policy.priority.promote_after_s
        )
        self._batch_ids = itertools.count(1)
        self._waiter: asyncio.Future[None] | None = None
        self.inflight_requests = 0
        self._drained: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.window = BatchWindow(policy.max_batch_size, policy.batch_timeout_s)
        self.cost = BatchCost()
        self.size_cap = BatchSizeCap(policy.max_batch_size)
        self._reserve = UrgentReserve(self.cost, policy.max_batch_size)
        # Each batch in flight: when it should be answered (None: not known), and its requests. A
        # batch answered is done before its callback drops it here, and the batcher may run between.
        self._running: dict[asyncio.Future[BatchDone], tuple[float | None, list[PendingRequest]]] = {}
        self._holding_since: float | None = None  # a worker is idle and the head batch is held
        self._hold_s = 0.0
        # Told of each request before it queues; may refuse it (a RequestError), e.g. an unloaded model.
        self.on_request: Callable[[], None] = lambda: None
        self._stopped = False  # a request reaching it after that is refused, never left queued

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model}")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for request in self._queue:
            _fail(request, ModelUnavailable(f"model {self.model!r} is shutting down"))
        self._queue.clear()

    def fail_queued(self, error: RequestError) -> None:
        """Answer every request still queued with `error` (its model's workers will not come)."""
        for request in self._queue:
            _fail(request, error)
        self._queue.clear()

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until every accepted request has been answered."""
        if self.inflight_requests:
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._drained], timeout=timeout_s)

    async def infer(self, payload: Payload, items: int, key: Hashable, priority: int = 0) -> Payload:
        """Queue one request and wait for its own outputs; raise a RequestError otherwise.
        `priority` is checked already (priority.py): 0 is the model's default."""
        if self._stopped:
            raise ModelUnavailable(f"model {self.model!r} is shutting down")
        if items > self.policy.max_batch_size:
            raise _too_many_items(self.model, items, self.policy.max_batch_size)
        self.on_request()
        reason = self._pool.unavailable_reason
        if reason and not self._pool.ready_count:
            raise ModelUnavailable(f"model {self.model!r} is unavailable: {reason}")
        if len(self._queue) >= self.policy.max_queue_size:
            raise QueueFull(
                f"model {self.model!r} has {len(self._queue)} requests queued (max_queue_size); retry later",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self.window.request_arrived(now)
        request = PendingRequest(payload, items, key, now, loop.create_future(), self.policy.priority.level(priority))
        request.timer = loop.call_later(self.policy.request_timeout_s, self._expire, request)
        self._queue.append(request)
        self._reserve.request_arrived(request.level, items, now, lambda: self._in_model(request.level))
        self.inflight_requests += 1
        self.wake()
        try:
            return await request.future
        except asyncio.CancelledError:
            self._withdraw(request)
            raise
        finally:
            self.inflight_requests -= 1
            request.timer.cancel()
            if not self.inflight_requests and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def expect(self, in_s: float) -> None:
        """A request is due here in about `in_s` (a pipeline's step before this one is running):
        with nothing queued, the worker that would take it is told shortly before then, so that it
        is awake and polling when the request comes instead of woken by it (busy_poll.py)."""
        if self.policy.busy_poll_s and not self._queue and self._pool.idle_slots:
            wait_s = max(0.0, in_s - HEADS_UP_LEAD_S)
            asyncio.get_running_loop().call_later(wait_s, self._heads_up, HEADS_UP_LEAD_S + self.policy.busy_poll_s)

    def _heads_up(self, within_s: float) -> None:
        worker = self._pool.idle_worker() if not self._queue else None  # else one is on its way anyway
        if worker is not None:
            worker.heads_up(within_s)

    def _withdraw(self, request: PendingRequest) -> None:
        if self._queue.remove(request):  # else already dispatched: its batch runs on
            self._observer.request_cancelled()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self, request: PendingRequest) -> None:
        if request.future.done():
            return
        timeout_ms = self.policy.request_timeout_s * 1000
        request.future.set_exception(
            RequestTimedOut(f"model {self.model!r} did not answer within {timeout_ms:g} ms (request_timeout_ms)")
        )
        # Queued requests are never computed once they expire; a dispatched one's batch runs on,
        # its answer for this request dropped.
        self._queue.remove(request)

    async def _run(self) -> None:
        while True:
            await self._dispatch_ready_batches()

    async def _dispatch_ready_batches(self) -> None:
        worker = self._pool.idle_worker() if self._queue else None
        if worker is None:
            return await self._sleep(None)
        now = time.monotonic()
        promoted = self._queue.promote(now)
        if promoted:
            self._observer.requests_promoted(promoted)
        urgent_level = self._reserve.urgent_level(now)
        look_again_at = self._yield_until(urgent_level, now)
        if look_again_at is not None:
            return await self._sleep(None if look_again_at == math.inf else look_again_at - now)
        chosen, full = self._take(urgent_level)
        go_now = full or self._urgent_among_others(chosen[0].level, urgent_level)
        wait_s = 0.0 if go_now else self._hold_deadline(chosen) - time.monotonic()
        if wait_s > 0:
            return await self._sleep(wait_s)
        self._queue.remove_taken(chosen)
        self._dispatch(worker, chosen)

    def _yield_until(self, urgent_level: int | None, now: float) -> float | None:
        """None if the head's batch may start now; else when to look again (inf: at the next event)."""
        if urgent_level is None or not self._reserve.yields(self._queue.head().level, urgent_level):
            return None
        other_idle = self._pool.idle_slots > 1
        running = [due for future, (due, _) in self._running.items() if not future.done()]
        in_model = self._in_model(urgent_level)
        return self._reserve.look_again_at(urgent_level, now, running, other_idle, in_model)

    def _in_model(self, level: int) -> int:
        """Requests of `level` queued or in a batch still running."""
        running = (chosen for future, (_, chosen) in self._running.items() if not future.done())
        return self._queue.count_at(level) + sum(1 for chosen in running for r in chosen if r.level == level)

    def _urgent_among_others(self, level: int, urgent_level: int | None) -> bool:
        """Whether this batch is urgent while lower ones arrive: the company it would wait for
        could not join it, so it never waits."""
        return urgent_level is not None and level != PROMOTED and level <= urgent_level

    def _hold_deadline(self, chosen: list[PendingRequest]) -> float:
        """When a held partial batch must leave: decided once per hold, so arrivals that do not
        fill the batch never push its departure back."""
        if self.policy.fixed_wait and self.policy.batch_timeout_s is not None:
            self._holding_since = self._holding_since or time.monotonic()
            return chosen[0].arrived + self.policy.batch_timeout_s
        if self._holding_since is None:
            hold_s = self.window.hold_s(sum(r.items for r in chosen))
            if hold_s <= 0:
                return 0.0  # go now
            self._holding_since, self._hold_s = time.monotonic(), hold_s
        deadline = self._holding_since + self._hold_s
        if self.policy.batch_timeout_s is not None:
            deadline = min(deadline, chosen[0].arrived + self.policy.batch_timeout_s)
        return deadline

    async def _sleep(self, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self.wake) if timeout_s is not None else None
        try:
            await self._waiter
        finally:
            if timer is not None:
                timer.cancel()

    def _take(self, urgent_level: int | None) -> tuple[list[PendingRequest], bool]:
        """The head request and those after it that may share its batch; whether it is full."""
        head = self._queue.head()
        limit_lower = self._urgent_among_others(head.level, urgent_level)
        limit = full_items = self.size_cap.limit()
        chosen: list[PendingRequest] = []
        items = 0
        for request in self._queue:
            if request.key != head.key:
                continue
            if limit_lower and self._reserve.yields(request.level, urgent_level):
                limit, limit_lower = min(limit, self._reserve.fill_limit(items)), False  # the first lower one
            if chosen and items + request.items > limit:  # the head goes whole, whatever the cap
                return chosen, True
            chosen.append(request)
            items += request.items
            if items >= full_items:
                return chosen, True
        return chosen, False

    def _dispatch(self, worker: Worker, chosen: list[PendingRequest]) -> None:
        now = time.monotonic()
        held_from = now if self._holding_since is None else self._holding_since
        self._holding_since = None
        batch_waits_s = [now - max(r.arrived, held_from) for r in chosen]
        worker_waits_s = [now - r.arrived - batch_wait_s for r, batch_wait_s in zip(chosen, batch_waits_s)]
        self._observer.batch_dispatched(sum(r.items for r in chosen), worker_waits_s, batch_waits_s)
        for request in chosen:
            request.attempts += 1
        batch_id = next(self._batch_ids)
        items = sum(r.items for r in chosen)
        busy_s = self.cost.late_s(items)
        future = worker.submit(Batch(batch_id, [r.payload for r in chosen]))
        self._running[future] = (None if busy_s is None else now + busy_s, chosen)
        if self.policy.busy_poll_s and not self._queue:
            # Nothing else queued: the loop would sleep until this answer; under load it has work anyway.
            expected_s = self.cost.estimate_s(items)
            if expected_s is not None:
                LOOP_SPINNER.watch_around(future, expected_s, self.policy.busy_poll_s)
        hung_timer = asyncio.get_running_loop().call_later(self.policy.request_timeout_s, self._on_hung, worker, future)
        future.add_done_callback(lambda done: self._on_batch_done(done, chosen, hung_timer))

    def _on_hung(self, worker: Worker, future: asyncio.Future[BatchDone]) -> None:
        if not future.done():
            self._replace_worker(worker, f"batch ran past request_timeout_ms ({self.policy.request_timeout_s:g} s)")

    def _on_batch_done(
        self,
        future: asyncio.Future[BatchDone],
        chosen: list[PendingRequest],
        hung_timer: asyncio.TimerHandle,
    ) -> None:
        hung_timer.cancel()
        self._running.pop(future, None)
        error = future.exception()
        if error is not None:
            self._retry_or_fail(chosen, error)
        else:
            done = future.result()
            items = sum(r.items for r in chosen)
            self._observer.batch_done(done.compute_s, items=items, requests=len(chosen))
            self.window.batch_done(items, done.compute_s)
            self.cost.observe(items, done.compute_s)
            self.size_cap.observe(items, done.compute_s if done.cpu_s is None else done.cpu_s)
            for request, result in zip(chosen, done.results):
                _deliver(self.model, request, result)
        self.wake()

    def _retry_or_fail(self, chosen: list[PendingRequest], error: BaseException) -> None:
        live = [r for r in chosen if not r.future.done()]
        if self._pool.ready_count and all(r.attempts < 2 for r in live):
            log.warning("model %s: %s; retrying its %d request(s) once", self.model, error, len(live))
            self._queue.requeue_front(live)
            return
        for request in live:
            _fail(request, ModelUnavailable(f"model {self.model!r}: {error}"))


def _deliver(model: str, request: PendingRequest, result: Payload | RequestFailure) -> None:
    if request.future.done():
        return
    if isinstance(result, RequestFailure):
        error_class = ModelFailed if result.bad_input else ModelError
        message = f"model {model!r} failed: {result.error_type}: {result.message}"
        request.future.set_exception(error_class(message, detail=result.detail))
    else:
        request.future.set_result(result)


def _fail(request: PendingRequest, error: RequestError) -> None:
    if not request.future.done():
        request.future.set_exception(error)


def _too_many_items(model: str, items: int, limit: int) -> RequestError:
    return BadRequest(
        f"this request carries {items} items but model {model!r} takes at most {limit} per batch "
        "(max_batch_size); split it into smaller requests"
    )
