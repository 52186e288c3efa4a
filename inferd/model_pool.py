"""The registry of model lifecycle: which models have workers; loading and unloading them (the
repository API), lazy loading on a first request, idle unloading, and eviction under the
`server.pool` budgets. Routes and metrics read a model's state here.

A model with workers is, by name (a reload's new generation keeps its entry):

    unloaded --load--> loading --all workers ready--> loaded --unload--> unloading --> unloaded

Invariants:
- the current generation's batcher (or sequence scheduler) always runs: requests to a lazy model
  wait in its bounded queue, within their deadline, while its workers start;
- a request to an eager model that is unloaded (or unloading) is refused at once: 503 naming it;
- loads are planned one at a time (`_planning`), so two loads never both take the last room; an
  unknown footprint (a model never loaded) counts as nothing until it is measured, right after
  its load: if it then passes a budget, idle models go, or else the new one goes again;
- only idle lazy models are evicted, least recently used first (pool_budget.py);
- an unload drains first: requests already accepted are answered by the workers still running,
  then the workers are asked to stop (killed past WORKER_STOP_TIMEOUT_S) and their memory is back;
- a reload keeps each model's state: a loaded model's new generation loads, an unloaded one's
  does not (a model the reload makes eager loads, unless the repository API unloaded it).
Pipelines have no workers: they are never pooled, and their steps load on demand like any model.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from inferd.batching import Batcher
from inferd.errors import InferdError, ModelUnavailable, RequestError
from inferd.footprint import footprint
from inferd.generation.scheduler import Scheduler
from inferd.messages import GpuMemory
from inferd.pool_budget import Budget, PoolFull, Resident, plan_evictions
from inferd.pool_config import PoolConfig
from inferd.pool_metrics import PoolMetrics, PoolState
from inferd.supervisor import Supervisor, WorkerHandle

if TYPE_CHECKING:
    from inferd.daemon import ServedModel

log = logging.getLogger(__name__)

UNLOADED, LOADING, LOADED, UNLOADING = "unloaded", "loading", "loaded", "unloading"
WORKER_STOP_TIMEOUT_S = 10.0
BUSY_RECHECK_S = 1.0  # a model with work in flight is looked at again this soon for its idle unload


class GpuReadings(Protocol):
    """The GPU memory each worker last reported (the metrics' state collector keeps them)."""

    def gpu_reading(self, handle: WorkerHandle) -> GpuMemory | None: ...

    def forget_gpu(self, model: str) -> None: ...


@dataclass(eq=False)
class _Entry:
    lazy: bool
    idle_unload_s: float | None
    state: str
    last_used_s: float = 0.0  # monotonic: its last request's arrival, or its load
    seen_busy_s: float = 0.0  # monotonic: when an idle check last found work in flight
    footprint: dict[str, int] = field(default_factory=dict)  # bytes by device, as last measured
    reason: str = ""  # why its last load failed
    held_unloaded: bool = False  # unloaded through the repository API: a reload leaves it so
    loading: asyncio.Task[None] | None = None
    unloading: asyncio.Event | None = None
    idle_timer: asyncio.TimerHandle | None = None


class ModelPool:
    def __init__(
        self,
        config: PoolConfig,
        drain_timeout_s: float,
        models: Callable[[], Mapping[str, ServedModel]],
        registry: CollectorRegistry,
        gpu: GpuReadings,
    ) -> None:
        self._budget = Budget(config.max_loaded_models, config.max_bytes)
        self._drain_timeout_s = drain_timeout_s
        self._models = models
        self._gpu = gpu
        self._entries: dict[str, _Entry] = {}
        self._planning = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # unloads and loads under way, kept referenced
        self.metrics = PoolMetrics(registry, self._states)

    # ---- generations -----------------------------------------------------------------------------

    def adopt(self, served: ServedModel) -> None:
        """Take a model's generation in: its requests now tell the pool of themselves."""
        if holds_no_workers(served):
            return
        lazy, idle_unload_s = served.config.load == "lazy", served.config.idle_unload_s
        entry = self._entries.get(served.name)
        if entry is None:  # an eager model is loading from the server's start on
            entry = self._entries[served.name] = _Entry(lazy, idle_unload_s, UNLOADED if lazy else LOADING)
        entry.lazy, entry.idle_unload_s = lazy, idle_unload_s
        hook = functools.partial(self._on_request, served.name)
        if isinstance(served.batcher, Batcher):
            served.batcher.on_request = hook
        for scheduler in _schedulers(served):
            scheduler.on_request = hook

    async def start_model(self, served: ServedModel, previous: ServedModel | None = None) -> None:
        """Start a generation: its batcher always, its workers where the model is to be loaded
        (an eager model at start; at a reload, whatever the previous generation was)."""
        if holds_no_workers(served):
            return await served.start()
        self.adopt(served)
        entry = self._entries[served.name]
        await self._settle(entry)
        served.batcher.start()
        if not (entry.state in (LOADING, LOADED) or (not entry.lazy and not entry.held_unloaded)):
            entry.state = UNLOADED
            return
        start = self._start_generation(served, "start" if previous is None else "reload")
        entry.loading = asyncio.get_running_loop().create_task(start, name=f"start-{served.name}")
        try:
            await entry.loading
        finally:
            entry.loading = None

    async def _start_generation(self, served: ServedModel, cause: str) -> None:
        entry = self._entries[served.name]
        before = entry.state
        if before != LOADED:  # a loaded model's reload: the previous generation serves meanwhile
            entry.state = LOADING
        started = time.monotonic()
        try:
            await _workers(served).start()
        except BaseException:
            entry.state = before if cause == "reload" else UNLOADED
            raise
        self._loaded(served, cause, started)

    def close(self) -> None:
        """The server stops: no more idle unloads or loads."""
        for entry in self._entries.values():
            _disarm(entry)
            if entry.loading is not None:
                entry.loading.cancel()
        for task in self._tasks:
            task.cancel()

    # ---- what routes read ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every model that should have workers now has a ready one: eager models, unless the
        repository API unloaded them; lazy ones never hold readiness back."""
        for name, served in self._models().items():
            entry = self._entries.get(name)
            if entry is None or entry.lazy or entry.state not in (LOADING, LOADED):
                continue
            if not served.workers.ready_count:
                return False
        return True

    def state(self, served: ServedModel) -> str:
        """unloaded | loading | unloading, or once loaded its workers' state (ready, loading, unavailable)."""
        entry = self._entries.get(served.name)
        return served.workers.state if entry is None or entry.state == LOADED else entry.state

    def describe(self, served: ServedModel) -> dict[str, Any]:
        """`ServedModel.describe`, with the pool's view of the model."""
        described = served.describe()
        entry = self._entries.get(served.name)
        if entry is None:
            return described
        return {
            **described,
            "state": self.state(served),
            "reason": described["reason"] or entry.reason or None,
            "load": "lazy" if entry.lazy else "eager",
            "idle_unload_s": entry.idle_unload_s,
            "memory_bytes": dict(entry.footprint) if entry.state == LOADED else {},
        }

    def _states(self) -> list[PoolState]:
        states = []
        for name in self._models():
            entry = self._entries.get(name)
            if entry is not None:
                loaded = entry.state in (LOADING, LOADED)
                states.append(PoolState(name, loaded, entry.footprint if entry.state == LOADED else {}))
        return states

    # ---- the repository API ----------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load a model (a no-op when loaded); raises PoolFull or StartupError."""
        entry = self._entries[name]
        entry.held_unloaded = False
        if entry.state != LOADED:
            await asyncio.shield(self._start_load(name, "repository"))

    async def unload(self, name: str) -> None:
        """Unload a model once what it accepted is answered (a load under way finishes first)."""
        entry = self._entries[name]
        entry.held_unloaded = True
        await self._settle(entry)
        if entry.state == LOADED:
            await asyncio.shield(self._spawn(self._unload(name, "repository")))

    # ---- requests --------------------------------------------------------------------------------

    def _on_request(self, name: str) -> None:
        """Every request to the model, before it queues: record the use, load a lazy model."""
        entry = self._entries[name]
        entry.last_used_s = time.monotonic()
        if entry.state in (LOADED, LOADING):
            return
        if not entry.lazy:
            why = f" (its last load failed: {entry.reason})" if entry.reason else ""
            raise ModelUnavailable(
                f"model {name!r} is {entry.state}{why}; POST /v2/repository/models/{name}/load loads it again"
            )
        if entry.state == UNLOADED:
            self._start_load(name, "request")
        # unloading: the request waits in the queue, and the unload's end loads the model again

    # ---- loading ---------------------------------------------------------------------------------

    def _start_load(self, name: str, cause: str) -> asyncio.Task[None]:
        entry = self._entries[name]
        if entry.loading is None:
            task = asyncio.get_running_loop().create_task(self._load(name, cause), name=f"load-{name}")
            entry.loading = task
            task.add_done_callback(functools.partial(self._load_done, name))
        return entry.loading

    async def _load(self, name: str, cause: str) -> None:
        entry = self._entries[name]
        if entry.unloading is not None:
            await entry.unloading.wait()
        if entry.state == LOADED:
            return
        async with self._planning:
            for victim in plan_evictions(self._budget, self._residents(name), name, entry.footprint):
                await self._evict(victim, name)
            entry.state = LOADING
        served = self._served(name)
        started = time.monotonic()
        try:
            await _workers(served).start()
        except BaseException:
            entry.state = UNLOADED
            raise
        self._loaded(served, cause, started)
        await self._fit_measured(name)

    def _loaded(self, served: ServedModel, cause: str, started_s: float) -> None:
        entry = self._entries[served.name]
        now = time.monotonic()
        entry.state, entry.reason, entry.held_unloaded = LOADED, "", False
        entry.last_used_s = max(entry.last_used_s, now)  # just loaded: not the first to go
        entry.footprint = self._measure(served)
        self.metrics.loaded(served.name, cause, now - started_s)
        log.info("model %s loaded (%s) in %.2f s, holding %s", served.name, cause, now - started_s,
                 _sizes(entry.footprint))  # fmt: skip
        self._arm_idle(served.name)

    async def _fit_measured(self, name: str) -> None:
        """Now that the new model is measured: make room for it, or unload it again."""
        if not self._budget.max_bytes:
            return
        entry = self._entries[name]
        async with self._planning:
            try:
                victims = plan_evictions(self._budget, self._residents(name), name, entry.footprint)
            except PoolFull as error:
                await self._unload(name, "budget")
                raise PoolFull(f"{error} (model {name!r} was measured once loaded, and unloaded again)") from None
            for victim in victims:
                await self._evict(victim, name)

    def _load_done(self, name: str, task: asyncio.Task[None]) -> None:
        entry = self._entries[name]
        entry.loading = None
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        entry.reason = str(error)
        if isinstance(error, PoolFull):
            log.warning("%s", error)  # the budget's doing, not a fault: the next request tries again
        elif isinstance(error, InferdError):
            log.error("%s", error)
        else:
            log.error("model %s: the load failed: %r", name, error)
        self._fail_queued(name, error if isinstance(error, RequestError) else ModelUnavailable(str(error)))

    def _residents(self, loading: str) -> list[Resident]:
        """Every other model holding (or about to hold) workers, measured afresh."""
        residents = []
        for name, served in self._models().items():
            entry = self._entries.get(name)
            if name == loading or entry is None or entry.state not in (LOADING, LOADED):
                continue
            if entry.state == LOADED and self._budget.max_bytes:
                entry.footprint = self._measure(served)  # memory grows with use
            residents.append(Resident(name, dict(entry.footprint), entry.last_used_s, _kept_because(entry, served)))
        return residents

    def _measure(self, served: ServedModel) -> dict[str, int]:
        return footprint(served.workers.handles.values(), self._gpu.gpu_reading)

    # ---- unloading -------------------------------------------------------------------------------

    async def _evict(self, victim: str, wanted: str) -> None:
        log.info("model %s: unloading it (least recently used, idle) to make room for %s", victim, wanted)
        await self._unload(victim, "eviction")

    async def _unload(self, name: str, cause: str) -> None:
        entry = self._entries[name]
        if entry.state != LOADED:
            return
        served = self._served(name)
        entry.state, entry.unloading = UNLOADING, asyncio.Event()
        _disarm(entry)
        try:
            await served.batcher.drain(self._drain_timeout_s)
            for scheduler in _schedulers(served):
                await scheduler.drain(self._drain_timeout_s)
            await _workers(served).stop(WORKER_STOP_TIMEOUT_S)
            self._gpu.forget_gpu(name)
        finally:
            entry.state = UNLOADED
            entry.unloading.set()
            entry.unloading = None
        self.metrics.unloaded(name, cause)
        log.info("model %s unloaded (%s)", name, cause)
        if _queued(served):  # requests that came during the unload
            if entry.lazy:
                self._start_load(name, "request")
            else:
                self._fail_queued(name, ModelUnavailable(f"model {name!r} was unloaded before it could answer"))

    def _fail_queued(self, name: str, error: RequestError) -> None:
        served = self._models().get(name)
        if served is None:
            return
        if isinstance(served.batcher, Batcher):
            served.batcher.fail_queued(error)
        for scheduler in _schedulers(served):
            scheduler.fail_queued(error.message)

    async def _settle(self, entry: _Entry) -> None:
        """Wait out a load or an unload under way."""
        if entry.loading is not None:
            await asyncio.wait([entry.loading])
        if entry.unloading is not None:
            await entry.unloading.wait()

    # ---- idle unloading --------------------------------------------------------------------------

    def _arm_idle(self, name: str, delay_s: float | None = None) -> None:
        entry = self._entries[name]
        _disarm(entry)
        if entry.idle_unload_s is not None and entry.state == LOADED:
            delay_s = entry.idle_unload_s if delay_s is None else delay_s
            entry.idle_timer = asyncio.get_running_loop().call_later(delay_s, self._idle_check, name)

    def _idle_check(self, name: str) -> None:
        entry = self._entries[name]
        entry.idle_timer = None
        served = self._models().get(name)
        if entry.state != LOADED or entry.idle_unload_s is None or served is None:
            return
        now = time.monotonic()
        if _in_flight(served):
            entry.seen_busy_s = now
            return self._arm_idle(name, min(entry.idle_unload_s, BUSY_RECHECK_S))
        remaining_s = entry.idle_unload_s - (now - max(entry.last_used_s, entry.seen_busy_s))
        if remaining_s > 0:
            return self._arm_idle(name, remaining_s)
        log.info("model %s: no request for %g s (idle_unload_s): unloading it", name, entry.idle_unload_s)
        self._spawn(self._unload(name, "idle"))

    # ---- helpers ---------------------------------------------------------------------------------

    def _served(self, name: str) -> ServedModel:
        return self._models()[name]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _workers(served: ServedModel) -> Supervisor:
    assert isinstance(served.supervisor, Supervisor)  # a pooled model is never a pipeline or a split
    return served.supervisor


def _in_flight(served: ServedModel) -> int:
    """Requests accepted and not answered: queued, or in a batch or a running sequence."""
    schedulers = _schedulers(served)
    return served.batcher.inflight_requests + sum(s.queue_depth + s.running_sequences for s in schedulers)


def _queued(served: ServedModel) -> int:
    return served.batcher.queue_depth + sum(s.queue_depth for s in _schedulers(served))


def _schedulers(served: ServedModel) -> list[Scheduler]:
    """A generative model's sequences, and a handler model's streamed requests (its predict yields)."""
    return [s for s in (served.generator, served.streamer) if s is not None]


def _kept_because(entry: _Entry, served: ServedModel) -> str | None:
    if entry.state == LOADING:
        return "is loading"
    if not entry.lazy:
        return "is eager (load: eager)"
    in_flight = _in_flight(served)
    return f"has {in_flight} request(s) queued or running" if in_flight else None


def _disarm(entry: _Entry) -> None:
    if entry.idle_timer is not None:
        entry.idle_timer.cancel()
        entry.idle_timer = None


def _sizes(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{size / 2**20:.0f} MiB on {device}" for device, size in sorted(sizes.items())) or "nothing"


def holds_no_workers(served: ServedModel) -> bool:
    """A pipeline or a traffic split: it sends its requests to other models, which the pool holds."""
    return served.config.pipeline is not None or served.config.split is not None
