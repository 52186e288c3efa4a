"""Start, watch, restart and stop worker processes, from inside the main process's event loop.

Each worker is watched through two file descriptors registered with the loop: its channel (messages)
and its process sentinel (exit). Invariants:
- a worker holds at most one batch; `WorkerHandle.submit` refuses a second;
- when a worker exits, the future of the batch it held fails with `WorkerLost` at once, so the
  batcher can retry or fail its requests; nothing waits on a dead process;
- a worker that fails to boot during start-up stops start-up (`StartupError`), never a restart loop;
  one that dies after it was ready is restarted at once; one that then dies again before it is
  ready is restarted with exponential backoff while it keeps failing; a model with no ready worker
  after repeated failures is `unavailable` until a restart succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferd.channel import ChannelClosed, MainChannel, connect, spawn_process
from inferd.errors import StartupError
from inferd.messages import Batch, BatchDone, BootFailed, Ready, RequestFailure, Stats, Stop
from inferd.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
UNAVAILABLE_AFTER_FAILURES = 3


class WorkerLost(Exception):
    """The worker holding a batch exited before answering it."""


STARTING, READY, STOPPING, EXITED = "starting", "ready", "stopping", "exited"


class WorkerHandle:
    """The main process's view of one worker process."""

    def __init__(self, spec: WorkerSpec, process: Any) -> None:
        self.spec = spec
        self.process = process
        self.channel: MainChannel | None = None
        self.process_exited = False  # the sentinel fired
        self.state = STARTING
        self.ready: Ready | None = None
        self.boot_failure: BootFailed | None = None
        self.ready_at: float | None = None
        self.last_dispatch = 0.0  # monotonic time of its last batch: the idle one used least recently goes next
        self.pending: asyncio.Future[BatchDone] | None = None
        self.exit_description = ""

    @property
    def name(self) -> str:
        return self.spec.slot.name

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def idle(self) -> bool:
        return self.state == READY and self.pending is None

    def submit(self, batch: Batch) -> asyncio.Future[BatchDone]:
        if not self.idle:
            raise RuntimeError(f"worker {self.name} is not idle")
        future: asyncio.Future[BatchDone] = asyncio.get_running_loop().create_future()
        self.pending = future
        self.last_dispatch = time.monotonic()
        try:
            assert self.channel is not None
            self.channel.send(batch)
        except ChannelClosed:
            self._fail_pending("the worker's channel closed while sending a batch")
        except Exception as error:  # e.g. RecursionError while pickling: nothing was sent, the worker is fine
            log.error("batch %d for worker %s could not be sent: %r", batch.batch_id, self.name, error)
            failure = RequestFailure(type(error).__name__, f"the batch could not be sent to a worker: {error}", False)
            self.pending = None
            future.set_result(BatchDone(batch.batch_id, [failure] * len(batch.payloads), 0.0))
        return future

    def _fail_pending(self, reason: str) -> None:
        future, self.pending = self.pending, None
        if future is not None and not future.done():
            future.set_exception(WorkerLost(f"worker {self.name} (pid {self.pid}) {reason}"))


@dataclass
class ModelWorkers:
    """One model's workers and their restart bookkeeping."""

    name: str
    specs: list[WorkerSpec]
    handles: dict[str, WorkerHandle] = field(default_factory=dict)  # by slot name
    failures: dict[str, int] = field(default_factory=dict)  # consecutive, by slot name
    restarts_total: int = 0
    unavailable_reason: str | None = None
    info: Ready | None = None  # the first Ready: the model's discovered inputs and outputs

    def idle_worker(self) -> WorkerHandle | None:
        idle = [h for h in self.handles.values() if h.idle]
        return min(idle, key=lambda h: h.last_dispatch) if idle else None

    @property
    def ready_count(self) -> int:
        return sum(1 for h in self.handles.values() if h.state == READY)

    @property
    def state(self) -> str:
        if self.ready_count:
            return "ready"
        if self.unavailable_reason:
            return "unavailable"
        return "loading"


class Supervisor:
    def __init__(self, specs: list[WorkerSpec]) -> None:
        self.models: dict[str, ModelWorkers] = {}
        for spec in specs:
            self.models.setdefault(spec.model.name, ModelWorkers(spec.model.name, [])).specs.append(spec)
        self.on_change: Callable[[str], None] = lambda model: None  # a worker became ready, idle or gone
        self._stopping = False
        self._booted = False
        self._changed: asyncio.Future[None] | None = None
        self._exited: dict[int, asyncio.Future[None]] = {}
        self._restart_timers: list[asyncio.TimerHandle] = []
        self.on_stats: Callable[[WorkerHandle, Any], None] = lambda handle, stats: None

    async def start(self) -> None:
        """Start every worker; return when all are ready, or raise StartupError on the first
        that cannot boot (after stopping the rest)."""
        for group in self.models.values():
            for spec in group.specs:
                await self._spawn(group, spec)
        while not self._booted:
            failed = [h for g in self.models.values() for h in g.handles.values() if h.state == EXITED]
            if failed:
                await self.stop(timeout_s=5.0)
                raise StartupError(_boot_failure_text(failed[0]))
            if all(g.ready_count == len(g.specs) for g in self.models.values()):
                self._booted = True
                return
            await self._next_change()

    async def _next_change(self) -> None:
        self._changed = asyncio.get_running_loop().create_future()
        await self._changed

    def _notify(self, model: str) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self.on_change(model)

    async def _spawn(self, group: ModelWorkers, spec: WorkerSpec) -> None:
        process, sock = spawn_process(worker_main, (spec,), f"inferd-{spec.model.name}-{spec.slot.name}")
        handle = WorkerHandle(spec, process)
        group.handles[spec.slot.name] = handle
        loop = asyncio.get_running_loop()
        self._exited[handle.pid] = loop.create_future()
        handle.channel = await connect(
            sock, lambda message: self._handle_message(group, handle, message), lambda: self._on_exit(group, handle)
        )
        loop.add_reader(process.sentinel, self._on_sentinel, group, handle)
        log.info("started worker %s %s (pid %d)", group.name, spec.slot.describe(), handle.pid)

    def _on_sentinel(self, group: ModelWorkers, handle: WorkerHandle) -> None:
        asyncio.get_running_loop().remove_reader(handle.process.sentinel)
        handle.process_exited = True
        self._on_exit(group, handle)

    def _handle_message(self, group: ModelWorkers, handle: WorkerHandle, message: Any) -> None:
        if isinstance(message, BatchDone):
            future, handle.pending = handle.pending, None
            if message.gpu is not None:
                self.on_stats(handle, message.gpu)
            if future is not None and not future.done():
                future.set_result(message)
            self._notify(group.name)
        elif isinstance(message, Stats):
            self.on_stats(handle, message.gpu)
        elif isinstance(message, Ready):
            self._on_ready(group, handle, message)
        elif isinstance(message, BootFailed):
            handle.boot_failure = message

    def _on_ready(self, group: ModelWorkers, handle: WorkerHandle, ready: Ready) -> None:
        handle.state, handle.ready, handle.ready_at = READY, ready, time.monotonic()
        group.info = group.info or ready
        group.unavailable_reason = None
        log.info("worker %s %s ready (pid %d, %.2f s)", group.name, handle.name, handle.pid, ready.load_s)
        self._notify(group.name)

    def _on_exit(self, group: ModelWorkers, handle: WorkerHandle) -> None:
        """Called when the process's sentinel fires and when its channel closes; acts on the
        second, so every message the worker sent before exiting (a BootFailed) has been read."""
        if not (handle.process_exited and handle.channel is not None and handle.channel.closed):
            return
        if handle.state == EXITED:
            return
        # The sentinel closes a moment before the process can be reaped: join(0) (WNOHANG) may miss
        # the exit status; a timeout makes it a blocking waitpid, which returns at once here.
        handle.process.join(timeout=1.0)
        was_ready, handle.state = handle.state == READY, EXITED
        handle.exit_description = _describe_exit(handle.process.exitcode)
        handle._fail_pending(f"exited ({handle.exit_description}) while holding a batch")
        self._exited.pop(handle.pid).set_result(None)  # popped: a long-lived daemon restarts many
        if self._stopping or handle.state == STOPPING:
            log.info("worker %s %s stopped (%s)", group.name, handle.name, handle.exit_description)
        else:
            self._after_unexpected_exit(group, handle, was_ready)
        self._notify(group.name)

    def _after_unexpected_exit(self, group: ModelWorkers, handle: WorkerHandle, was_ready: bool) -> None:
        if not self._booted:
            return  # start() reports it and stops start-up
        # Backoff is for a worker that cannot boot. One that was serving (killed, OOM, a crash on one
        # input) booted fine and will again: it is replaced at once, however often that happens.
        failures = 0 if was_ready else group.failures.get(handle.name, 0)
        group.failures[handle.name] = failures + 1
        reason = _boot_failure_text(handle) if handle.boot_failure else handle.exit_description
        log.error("worker %s %s (pid %d) died: %s", group.name, handle.name, handle.pid, reason)
        if failures + 1 >= UNAVAILABLE_AFTER_FAILURES and group.ready_count == 0:
            group.unavailable_reason = f"workers keep failing: {reason}"
        delay_s = 0.0 if failures == 0 else min(BACKOFF_FIRST_S * 2 ** (failures - 1), BACKOFF_MAX_S)
        timer = asyncio.get_running_loop().call_later(delay_s, self._restart, group, handle.spec)
        now = asyncio.get_running_loop().time()
        self._restart_timers = [t for t in self._restart_timers if t.when() > now] + [timer]

    def _restart(self, group: ModelWorkers, spec: WorkerSpec) -> None:
        if self._stopping:
            return
        group.restarts_total += 1
        asyncio.get_running_loop().create_task(self._spawn(group, spec))

    def replace(self, handle: WorkerHandle, reason: str) -> None:
        """Kill a worker that is stuck; its exit is handled like any crash (so it is restarted)."""
        if handle.state in (READY, STARTING):
            log.error("killing worker %s %s (pid %d): %s", handle.spec.model.name, handle.name, handle.pid, reason)
            handle.process.kill()

    async def stop(self, timeout_s: float) -> None:
        """Ask every worker to stop, then kill those still running after `timeout_s`."""
        self._stopping = True
        for timer in self._restart_timers:
            timer.cancel()
        handles = [h for g in self.models.values() for h in g.handles.values() if h.state != EXITED]
        for handle in handles:
            handle.state = STOPPING
            try:
                if handle.channel is not None:
                    handle.channel.send(Stop())
            except ChannelClosed:
                pass
        waits = {handle: self._exited[handle.pid] for handle in handles}
        if waits:
            _, still_running = await asyncio.wait(waits.values(), timeout=timeout_s)
            for handle, exited in waits.items():
                if not exited.done():
                    log.warning("worker %s did not stop in %.1f s; killing it", handle.name, timeout_s)
                    handle.process.kill()
            if still_running:
                await asyncio.wait(still_running, timeout=5.0)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _boot_failure_text(handle: WorkerHandle) -> str:
    model = handle.spec.model.name
    if handle.boot_failure is not None:
        failure = handle.boot_failure
        return f"model {model!r} failed to load: {failure.error_type}: {failure.message}"
    return f"model {model!r}: worker {handle.name} exited before it was ready ({handle.exit_description})"
