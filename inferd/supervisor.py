"""Start, watch, restart, replace and stop one model's worker processes, from inside the main
process's event loop.

Each worker is watched through two file descriptors registered with the loop: its channel
(messages) and its exit fd (a pidfd: it fires whoever the worker's parent is). Invariants:
- a worker holds at most its model's `max_concurrency` batches (1 unless its handler's predict is
  `async def`); `WorkerHandle.submit` refuses one more;
- when a worker exits, the future of every batch it held fails with `WorkerLost` at once, so the
  batcher can retry or fail their requests; nothing waits on a dead process;
- a worker that fails to boot during start-up stops start-up (`StartupError`), never a restart loop;
  one that dies after it was ready is restarted at once; one that then dies again before it is
  ready is restarted with exponential backoff (`restart_delay_s`) while it keeps failing; a model
  with no ready worker after repeated failures is `unavailable` until a restart succeeds;
- each slot has at most one restart pending; stopping cancels them;
- a worker whose resident memory passed `max_worker_memory_mb` after a batch takes no further
  batch: its replacement starts at once and it is asked to stop; none of its requests is lost;
- a SIGKILL the kernel's OOM-kill counter accounts for is reported as an OOM kill;
- the shared-memory segments left for or by a worker that exited are unlinked once its exit is handled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from inferd.cgroup import OomKills
from inferd.channel import ChannelClosed, MainChannel, connect
from inferd.config import ModelConfig
from inferd.errors import StartupError
from inferd.messages import Batch, BatchDone, BootFailed, Chunks, HeadsUp, Ready, RequestFailure, Stats, Stop
from inferd.process import StartFailed, WorkerProcess, discard, start_worker
from inferd.segments import SegmentDirectory, segment_prefix, sweep_worker
from inferd.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
UNAVAILABLE_AFTER_FAILURES = 3
RETIRE_TIMEOUT_S = 10.0  # a worker retired for its memory that has not stopped by then is killed

STARTING, READY, STOPPING, EXITED = "starting", "ready", "stopping", "exited"


class WorkerLost(Exception):
    """The worker holding a batch exited before answering it."""


class SupervisorObserver(Protocol):
    """Where the supervisor's events are counted (the model's metrics)."""

    def worker_exited(self, cause: str) -> None: ...

    def worker_replaced_for_memory(self) -> None: ...

    def channel_bytes(self, direction: str, path: str, nbytes: int) -> None: ...


def restart_delay_s(failures: int) -> float:
    """The wait before restarting a slot whose workers failed `failures` times in a row without
    becoming ready since the last one that was: none for a worker that was serving (it booted
    fine and will again), then doubling from BACKOFF_FIRST_S up to BACKOFF_MAX_S."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_FIRST_S * 2 ** (failures - 1), BACKOFF_MAX_S))


def describe_exit(exit_code: int | None, oom_killed: bool = False) -> str:
    if oom_killed:
        return "killed by the kernel's OOM killer (SIGKILL)"
    if exit_code is None:
        return "exit status unknown"
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}"


def exit_cause(exit_code: int | None, oom_killed: bool = False) -> str:
    """A metric label: oom_kill, the signal's name, exit_code (any other status) or unknown."""
    if oom_killed:
        return "oom_kill"
    if exit_code is None:
        return "unknown"
    if exit_code < 0:
        try:
            return signal.Signals(-exit_code).name
        except ValueError:
            return "signal"
    return "exit_code"


class WorkerHandle:
    """The main process's view of one worker process."""

    def __init__(self, spec: WorkerSpec, process: WorkerProcess, exited: asyncio.Future[None]) -> None:
        self.spec = spec
        self.name = spec.slot.name
        self.process = process
        self.exited = exited  # done once its exit has been handled
        self.channel: MainChannel | None = None
        self.process_exited = False  # its exit fd fired
        self.state = STARTING
        self.boot_failure: BootFailed | None = None
        self.last_dispatch = 0.0  # monotonic time of its last batch: the idle one used least recently goes next
        self.capacity = spec.model.max_concurrency
        self.pending: dict[int, asyncio.Future[BatchDone]] = {}  # the batches it holds, by batch_id
        self.exit_description = ""
        self.kill_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def idle(self) -> bool:
        """Whether it takes another batch now. Not once its channel has closed: its exit may not
        be seen yet, and a batch sent to it would fail again, using up its one retry."""
        closed = self.channel is None or self.channel.closed
        return self.state == READY and len(self.pending) < self.capacity and not closed

    def submit(self, batch: Batch) -> asyncio.Future[BatchDone]:
        if not self.idle:
            raise RuntimeError(f"worker {self.name} is not idle")
        future: asyncio.Future[BatchDone] = asyncio.get_running_loop().create_future()
        self.pending[batch.batch_id] = future
        self.last_dispatch = time.monotonic()
        try:
            assert self.channel is not None
            self.channel.send(batch)
        except ChannelClosed:
            self.fail_pending("the worker's channel closed while sending a batch")
        except Exception as error:  # e.g. RecursionError while pickling: nothing was sent, the worker is fine
            log.error("batch %d for worker %s could not be sent: %r", batch.batch_id, self.name, error)
            failure = RequestFailure(type(error).__name__, f"the batch could not be sent to a worker: {error}", False)
            del self.pending[batch.batch_id]
            future.set_result(BatchDone(batch.batch_id, [failure] * len(batch.payloads), 0.0))
        return future

    def heads_up(self, within_s: float) -> None:
        """Tell it a batch is due within about `within_s`, so it polls instead of sleeping."""
        if self.idle:
            try:
                assert self.channel is not None
                self.channel.send(HeadsUp(within_s))
            except ChannelClosed:
                pass  # its exit is handled where its channel's end is seen

    def fail_pending(self, reason: str) -> None:
        """Fail every batch it holds, the latest first: each batch's retry goes back to the head of
        the queue, so the earliest ends up first."""
        futures, self.pending = list(self.pending.values()), {}
        for future in reversed(futures):
            if not future.done():
                future.set_exception(WorkerLost(f"worker {self.name} (pid {self.pid}) {reason}"))

    def ask_to_stop(self, reason: str) -> None:
        self.state = STOPPING
        if self.channel is None:  # its start was cancelled before its channel was connected
            self.process.kill()
            return
        try:
            self.channel.send(Stop(reason))
        except ChannelClosed:
            pass  # already going: its exit is handled as it comes


class Supervisor:
    """One model's workers, one per slot, and their restart bookkeeping; the batcher's pool."""

    def __init__(
        self,
        model: ModelConfig,
        specs: list[WorkerSpec],
        observer: SupervisorObserver,
        oom_kills: OomKills,
        segments: SegmentDirectory | None = None,
    ) -> None:
        self.name = model.name
        self._segments = segments  # shared with every model's channels: a step's output forwarded as is
        self.specs = specs
        self.handles: dict[str, WorkerHandle] = {}  # the current worker of each slot, by slot name
        self.failures: dict[str, int] = {}  # consecutive failures to become ready, by slot name
        self.restarts_total = 0
        self.unavailable_reason: str | None = None
        self.info: Ready | None = None  # the first Ready: the model's discovered inputs and outputs
        self.on_change: Callable[[], None] = lambda: None  # a worker became ready, idle or gone
        self.on_stats: Callable[[WorkerHandle, Any], None] = lambda handle, stats: None
        # A generative model's scheduler: each step's chunks, and a worker gone with its sequences.
        self.on_chunks: Callable[[WorkerHandle, Chunks], None] = lambda handle, chunks: None
        self.on_worker_gone: Callable[[WorkerHandle], None] = lambda handle: None
        self._observer = observer
        self._oom_kills = oom_kills
        mib = model.max_worker_memory_mb
        self._max_resident_bytes = mib * 2**20 if mib is not None else None
        self._live: set[WorkerHandle] = set()  # every worker whose exit is not handled yet, retiring ones too
        self._restarts: dict[str, asyncio.Task[None]] = {}  # the pending restart of each slot
        self._stopping = False
        self._booted = False
        self._changed: asyncio.Future[None] | None = None

    # ---- the pool the batcher reads --------------------------------------------------------------

    def idle_worker(self) -> WorkerHandle | None:
        """The free worker holding the fewest batches, the one used least recently among those."""
        idle = [h for h in self.handles.values() if h.idle]
        return min(idle, key=lambda h: (len(h.pending), h.last_dispatch)) if idle else None

    @property
    def ready_count(self) -> int:
        return sum(1 for h in self.handles.values() if h.state == READY)

    @property
    def idle_slots(self) -> int:
        return sum(h.capacity - len(h.pending) for h in self.handles.values() if h.idle)

    @property
    def state(self) -> str:
        if self.ready_count:
            return "ready"
        if self.unavailable_reason:
            return "unavailable"
        return "loading"

    # ---- start-up --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker; return when all are ready, or raise StartupError on the first
        that cannot boot (after stopping the rest). After `stop`, this starts them again (a model
        pool's load): a worker that cannot boot then fails the start, as at start-up."""
        self._stopping, self._booted, self.unavailable_reason = False, False, None
        self.failures.clear()
        for spec in self.specs:
            try:
                await self._spawn(spec)
            except StartFailed as error:
                await self.stop(timeout_s=5.0)
                raise StartupError(f"model {self.name!r}: worker {spec.slot.name} could not start: {error}") from None
        while not self._booted:
            failed = [h for h in self.handles.values() if h.state == EXITED]
            if failed:
                await self.stop(timeout_s=5.0)
                raise StartupError(_boot_failure_text(failed[0]))
            if self.ready_count == len(self.specs):
                self._booted = True
                return
            await self._next_change()

    async def _next_change(self) -> None:
        self._changed = asyncio.get_running_loop().create_future()
        await self._changed

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self.on_change()

    async def _spawn(self, spec: WorkerSpec) -> None:
        process, sock = await self._start_process(spec)
        loop = asyncio.get_running_loop()
        handle = WorkerHandle(spec, process, loop.create_future())
        self.handles[spec.slot.name] = handle
        self._live.add(handle)
        loop.add_reader(process.exited_fd, self._on_process_exit, handle)
        handle.channel = await connect(
            sock, functools.partial(self._handle_message, handle), functools.partial(self._on_exit, handle),
            handle.pid, self._observer.channel_bytes, directory=self._segments,
        )  # fmt: skip
        log.info("started worker %s (pid %d)", spec.slot.describe(), handle.pid)

    async def _start_process(self, spec: WorkerSpec) -> tuple[WorkerProcess, socket.socket]:
        """Start it in a thread, so that serving goes on while a new fork helper loads torch."""
        name = f"inferd-{self.name}-{spec.slot.name}"
        started = asyncio.ensure_future(asyncio.to_thread(start_worker, worker_main, (spec,), name))
        try:
            return await asyncio.shield(started)
        except asyncio.CancelledError:  # stop() came first: the process must not outlive this
            started.add_done_callback(_discard_if_started)
            raise

    def _still_viewed(self, handle: WorkerHandle) -> frozenset[str]:
        """The exited worker's segments that the main process still views (a step's output on its
        way to the next step): its sweep leaves them, and each goes with its last view."""
        if self._segments is None:
            return frozenset()
        return self._segments.hold_orphans(segment_prefix(os.getpid(), handle.pid, "w"))

    # ---- messages --------------------------------------------------------------------------------

    def _handle_message(self, handle: WorkerHandle, message: Any) -> None:
        if isinstance(message, Chunks):
            self.on_chunks(handle, message)
        elif isinstance(message, BatchDone):
            self._on_batch_done(handle, message)
        elif isinstance(message, Stats):
            self.on_stats(handle, message.gpu)
        elif isinstance(message, Ready):
            self._on_ready(handle, message)
        elif isinstance(message, BootFailed):
            handle.boot_failure = message

    def _on_batch_done(self, handle: WorkerHandle, done: BatchDone) -> None:
        future = handle.pending.pop(done.batch_id, None)
        if done.gpu is not None:
            self.on_stats(handle, done.gpu)
        if future is not None and not future.done():
            future.set_result(done)
        limit = self._max_resident_bytes
        if limit is not None and done.resident_bytes is not None and done.resident_bytes > limit:
            self._retire_for_memory(handle, done.resident_bytes, limit)
        self._notify()

    def _on_ready(self, handle: WorkerHandle, ready: Ready) -> None:
        handle.state = READY
        self.info = self.info or ready
        self.unavailable_reason = None
        log.info("worker %s %s ready (pid %d, %.2f s)", self.name, handle.name, handle.pid, ready.load_s)
        self._notify()

    # ---- exits -----------------------------------------------------------------------------------

    def _on_process_exit(self, handle: WorkerHandle) -> None:
        asyncio.get_running_loop().remove_reader(handle.process.exited_fd)
        handle.process_exited = True
        self._on_exit(handle)

    def _on_exit(self, handle: WorkerHandle) -> None:
        """Called when the process's exit fd fires and when its channel closes; acts on the
        second, so every message the worker sent before exiting (a BootFailed) has been read."""
        if not (handle.process_exited and (handle.channel is None or handle.channel.closed)):
            return
        if handle.state == EXITED:
            return
        exit_code = handle.process.reap()
        oom_killed = exit_code == -signal.SIGKILL and self._oom_kills.claim()
        was_ready, expected = handle.state == READY, self._stopping or handle.state == STOPPING
        handle.state = EXITED
        handle.exit_description = describe_exit(exit_code, oom_killed)
        handle.fail_pending(f"exited ({handle.exit_description}) while holding a batch")
        if swept := sweep_worker(os.getpid(), handle.pid, self._still_viewed(handle)):
            log.info("unlinked %d shared-memory segment(s) of worker %s (pid %d)", swept, handle.name, handle.pid)
        if handle.kill_timer is not None:
            handle.kill_timer.cancel()
        self._live.discard(handle)
        handle.exited.set_result(None)
        self.on_worker_gone(handle)
        if expected:
            log.info("worker %s %s (pid %d) stopped (%s)", self.name, handle.name, handle.pid, handle.exit_description)
        else:
            self._after_unexpected_exit(handle, was_ready, exit_cause(exit_code, oom_killed))
        self._notify()

    def _after_unexpected_exit(self, handle: WorkerHandle, was_ready: bool, cause: str) -> None:
        if not self._booted:
            return  # start() reports it and stops start-up
        self._observer.worker_exited(cause)
        # Backoff is for a worker that cannot boot. One that was serving (killed, OOM, a crash on one
        # input) booted fine and will again: it is replaced at once, however often that happens.
        failures = 0 if was_ready else self.failures.get(handle.name, 0)
        self.failures[handle.name] = failures + 1
        reason = _boot_failure_text(handle) if handle.boot_failure else handle.exit_description
        log.error("worker %s %s (pid %d) died: %s", self.name, handle.name, handle.pid, reason)
        if failures + 1 >= UNAVAILABLE_AFTER_FAILURES and self.ready_count == 0:
            self.unavailable_reason = f"workers keep failing: {reason}"
        self._schedule_restart(handle.spec, restart_delay_s(failures))

    # ---- restarts and replacements ---------------------------------------------------------------

    def _schedule_restart(self, spec: WorkerSpec, delay_s: float) -> None:
        slot = spec.slot.name
        if self._stopping or slot in self._restarts:
            return
        task = asyncio.get_running_loop().create_task(self._restart(spec, delay_s), name=f"restart-{self.name}-{slot}")
        self._restarts[slot] = task
        task.add_done_callback(lambda _: self._restarts.pop(slot, None))

    async def _restart(self, spec: WorkerSpec, delay_s: float) -> None:
        """Start a new worker in the slot after `delay_s`, again with backoff while starting fails."""
        while True:
            await asyncio.sleep(delay_s)
            self.restarts_total += 1
            try:
                return await self._spawn(spec)
            except StartFailed as error:
                failures = self.failures[spec.slot.name] = self.failures.get(spec.slot.name, 0) + 1
                delay_s = restart_delay_s(failures)
                log.error(
                    "worker %s %s could not start: %s; retrying in %.1f s", self.name, spec.slot.name, error, delay_s
                )

    def _retire_for_memory(self, handle: WorkerHandle, resident_bytes: int, limit_bytes: int) -> None:
        if handle.state != READY:
            return
        log.warning(
            "worker %s %s (pid %d) holds %d MiB, over max_worker_memory_mb (%d): replacing it",
            self.name, handle.name, handle.pid, resident_bytes // 2**20, limit_bytes // 2**20,
        )  # fmt: skip
        self._observer.worker_replaced_for_memory()
        handle.ask_to_stop("resident memory over max_worker_memory_mb")
        handle.kill_timer = asyncio.get_running_loop().call_later(RETIRE_TIMEOUT_S, handle.process.kill)
        self._schedule_restart(handle.spec, 0.0)

    def replace(self, worker: object, reason: str) -> None:
        """Kill a worker that is stuck (the batcher names the handle it dispatched to); its exit is
        handled like any crash, so it is restarted. One that already exited is left alone."""
        handle = next((h for h in self._live if h is worker), None)
        if handle is not None and handle.state in (READY, STARTING):
            log.error("killing worker %s %s (pid %d): %s", self.name, handle.name, handle.pid, reason)
            handle.process.kill()

    # ---- shutdown --------------------------------------------------------------------------------

    async def stop(self, timeout_s: float) -> None:
        """Ask every worker to stop, then kill those still running after `timeout_s`."""
        self._stopping = True
        restarts = list(self._restarts.values())
        for task in restarts:
            task.cancel()
        await asyncio.gather(*restarts, return_exceptions=True)
        live = list(self._live)
        for handle in live:
            handle.ask_to_stop("shutdown")
        if not live:
            self.handles.clear()
            return
        _, still_running = await asyncio.wait([h.exited for h in live], timeout=timeout_s)
        for handle in live:
            if not handle.exited.done():
                log.warning("worker %s %s did not stop in %.1f s; killing it", self.name, handle.name, timeout_s)
                handle.process.kill()
        if still_running:
            await asyncio.wait(still_running, timeout=5.0)
        self.handles.clear()  # nothing of them is left to show or to dispatch to


def _discard_if_started(started: asyncio.Future[tuple[WorkerProcess, socket.socket]]) -> None:
    if not started.cancelled() and started.exception() is None:
        discard(started.result())


def _boot_failure_text(handle: WorkerHandle) -> str:
    model = handle.spec.model.name
    if handle.boot_failure is not None:
        failure = handle.boot_failure
        return f"model {model!r} failed to load: {failure.error_type}: {failure.message}"
    return f"model {model!r}: worker {handle.name} exited before it was ready ({handle.exit_description})"
