"""The serving state of one running inferd: its models, each with a batcher and a supervisor of its
own workers, and the metrics. Nothing here knows HTTP; routes look models up here per request.

Reload applies a new config's difference with no failed request: a changed model's new workers
boot and warm up beside the old ones, the new generation takes the route in one step, and the
old one drains what it had accepted before its workers stop. A model that cannot boot during a
reload is left out (or left as it was) and the reason is reported.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from inferd.admission import Admission
from inferd.batching import Batcher, BatchPolicy
from inferd.busy_poll import worker_window_s
from inferd.cgroup import OomKills
from inferd.composed_workers import ComposedWorkers
from inferd.config import Config, ModelConfig
from inferd.errors import StartupError
from inferd.generation.metrics import GenerationMetrics
from inferd.generation.scheduler import GenerationPolicy, Scheduler
from inferd.handler import TORCHSCRIPT, detect_format
from inferd.messages import TensorInfo
from inferd.metrics import Metrics, ModelMetrics
from inferd.model_pool import ModelPool
from inferd.pipeline import PipelineExecutor, pipeline_steps
from inferd.pipeline_metrics import PipelineMetrics
from inferd.placement import WorkerSlot
from inferd.priority import priority_policy
from inferd.protocols.shm import SharedMemory
from inferd.rate_limit import RateLimits
from inferd.segments import SegmentDirectory, sweep_daemon
from inferd.successor import Successor
from inferd.supervisor import Supervisor
from inferd.traffic_metrics import TrafficMetrics
from inferd.traffic_split import SplitRouter, split_variants
from inferd.versions import ONLY_VERSION, VersionTable, public_name, served_models
from inferd.worker import WorkerSpec

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 10.0
DEFAULT_INPUTS = (TensorInfo("input", "FP32", (-1,)),)
DEFAULT_HANDLER_INPUTS = (TensorInfo("input", "BYTES", (-1,)),)  # one item per element


@dataclass
class ServedModel:
    """One generation of one model: its config, workers and batcher."""

    config: ModelConfig
    slots: tuple[WorkerSlot, ...]
    supervisor: Supervisor | ComposedWorkers
    batcher: Batcher | PipelineExecutor | SplitRouter | Successor
    metrics: ModelMetrics
    generator: Scheduler | None = None  # a generative model's sequences (its batcher then stays idle)
    streamer: Scheduler | None = None  # a handler model's streamed requests (where its predict yields)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def workers(self) -> Supervisor | ComposedWorkers:
        return self.supervisor

    @property
    def public_name(self) -> str:
        """The name the config gives: a version's served name is '<name>@<version>'."""
        return public_name(self.name)

    @property
    def version(self) -> str:
        return self.config.version or ONLY_VERSION

    @property
    def is_handler(self) -> bool:
        """Whether requests carry items (a handler's, or a pipeline's whose first step is a handler)."""
        entry = self._pipeline_model("entry_step")
        return entry.is_handler if entry is not None else self.config.handler is not None

    def _pipeline_model(self, which: str) -> ServedModel | None:
        """A pipeline's first ("entry_step") or answering ("last_step") step's model (a split's
        heaviest variant's)."""
        if isinstance(self.batcher, (PipelineExecutor, SplitRouter)):
            return self.batcher.model_of(getattr(self.batcher, which))
        return None

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        """Declared in the YAML, else as the first ready worker found them in the model file."""
        entry = self._pipeline_model("entry_step")
        if entry is not None:
            return entry.inputs
        info = self.workers.info
        if info and info.inputs:
            return info.inputs
        declared = tuple(TensorInfo(s.name, s.datatype, s.shape) for s in self.config.inputs or ())
        return declared or (DEFAULT_HANDLER_INPUTS if self.is_handler else DEFAULT_INPUTS)

    @functools.cached_property
    def platform(self) -> str:
        """The model's kind, as v2 metadata names it."""
        if self.config.pipeline is not None:
            return "ensemble"  # Triton's name for a pipeline of models
        if self.config.path is None:
            return "python"
        try:
            return "pytorch_libtorch" if detect_format(self.config.path) == TORCHSCRIPT else "pytorch_export"
        except StartupError:
            return "pytorch"

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        last = self._pipeline_model("last_step")
        if last is not None:
            return last.outputs
        info = self.workers.info
        if info and info.outputs:
            return info.outputs
        return tuple(TensorInfo(s.name, s.datatype, s.shape) for s in self.config.outputs or ())

    async def start(self) -> None:
        self.batcher.start()
        await self.supervisor.start()

    async def retire(self, drain_timeout_s: float, successor: Successor | None = None) -> None:
        """Finish what was accepted (bounded), then stop the batcher and the workers; requests
        that still hold this model and submit later go to `successor` (inferd/successor.py)."""
        batcher = self.batcher
        if successor is not None and isinstance(batcher, Batcher):  # the others look up per request
            self.batcher = successor
        await batcher.drain(drain_timeout_s)
        for scheduler, which in ((self.generator, "generator"), (self.streamer, "streamer")):
            if scheduler is not None:
                await scheduler.drain(drain_timeout_s)
                if successor is not None:
                    scheduler.hand_on(functools.partial(_scheduler_of, successor, which))
        await batcher.stop()
        await self.supervisor.stop(WORKER_STOP_TIMEOUT_S)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            **({"version": self.config.version} if self.config.version else {}),
            **({"split": self.config.split.model_dump()} if self.config.split else {}),
            **({"pipeline": [s.model_dump() for s in self.config.pipeline]} if self.config.pipeline else {}),
            "route": self.config.url_path,
            "state": self.workers.state,
            "reason": self.workers.unavailable_reason,
            "device": self.config.device,
            "max_batch_size": self.config.max_batch_size,
            "queue_depth": self.batcher.queue_depth if self.generator is None else self.generator.queue_depth,
            "generative": self.generator is not None,
            "workers": [
                {
                    "slot": h.name,
                    "pid": h.pid,
                    "state": h.state,
                    "busy": bool(h.pending),
                    "batches": len(h.pending),
                    "cpus": list(h.spec.slot.cpus),
                    "threads": h.spec.slot.threads,
                }
                for h in self.workers.handles.values()
            ],
        }


@dataclass(frozen=True)
class ReloadResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Daemon:
    def __init__(self, config: Config, slots: list[WorkerSlot]) -> None:
        self.config = config
        largest_batch = max(m.max_batch_size for m in served_models(config.models))
        self.metrics = Metrics(config.server.histogram_buckets_s, largest_batch)
        self.state = self.metrics.watch(lambda: self.models)
        self._oom_kills = OomKills.of_this_process()  # one for all models: they share the cgroup
        self._segments = SegmentDirectory()  # one for all models: a pipeline's steps forward big tensors
        self.admission = Admission(config.server.max_request_bytes_held)
        self.shared_memory = SharedMemory()  # regions clients registered (v2 REST and gRPC)
        self.rate_limits = RateLimits(config.server.key_rate_limits, self.metrics.registry)
        self.metrics.watch_request_bytes(self.admission, lambda: self.models)
        self.generation_metrics = GenerationMetrics(
            self.metrics.registry, config.server.histogram_buckets_s, lambda: self.models
        )
        self.pipeline_metrics = PipelineMetrics(self.metrics.registry, config.server.histogram_buckets_s)
        self.traffic_metrics = TrafficMetrics(self.metrics.registry, config.server.histogram_buckets_s)
        self.versions = VersionTable.of(config.models)
        self.traffic_metrics.watch(lambda: self.models, lambda: self.versions)
        self.pool = ModelPool(
            config.server.pool, config.server.drain_timeout_s, lambda: self.models, self.metrics.registry,
            self.state,
        )  # fmt: skip
        self.models: dict[str, ServedModel] = {m.name: self._build(m, slots) for m in served_models(config.models)}
        for served in self.models.values():
            self.pool.adopt(served)
        self._reload_lock = asyncio.Lock()
        self._routes: dict[str, ServedModel] = {}
        self._index_routes()

    def _build(self, model: ModelConfig, slots: list[WorkerSlot]) -> ServedModel:
        if model.pipeline is not None:
            return self._build_pipeline(model)
        if model.split is not None:
            router = SplitRouter(model, self.find, self.traffic_metrics)
            return ServedModel(model, (), split_variants(router), router, self.metrics.for_model(model.name))
        base_dir = Path(self.config.source).resolve().parent
        level, log_format = self.config.server.log_level, self.config.server.log_format
        own_slots = tuple(s for s in slots if s.model == model.name)
        window_s = model.busy_poll_us / 1e6
        specs = [
            WorkerSpec(slot, model, base_dir, level, log_format, busy_poll_s=worker_window_s(window_s, slot, slots))
            for slot in own_slots
        ]
        policy = BatchPolicy(
            model.max_batch_size,
            None if model.batch_timeout_ms is None else model.batch_timeout_ms / 1000,
            model.max_queue_size,
            model.request_timeout_ms / 1000,
            fixed_wait=model.batch_wait == "fixed",
            priority=priority_policy(model),
            busy_poll_s=window_s,
        )
        metrics = self.metrics.for_model(model.name)
        supervisor = Supervisor(model, specs, metrics, self._oom_kills, self._segments)
        batcher = Batcher(model.name, policy, supervisor, metrics, supervisor.replace)
        supervisor.on_change = batcher.wake
        supervisor.on_stats = self.state.record_gpu
        generator = self._generator(model, supervisor)
        if generator is not None:
            supervisor.on_change = generator.wake
        streamer = self._streamer(model, supervisor, batcher)
        return ServedModel(model, own_slots, supervisor, batcher, metrics, generator, streamer)

    def _generator(self, model: ModelConfig, supervisor: Supervisor) -> Scheduler | None:
        if model.generation is None:
            return None
        policy = GenerationPolicy(
            model.max_batch_size, model.max_queue_size, model.request_timeout_ms / 1000, priority_policy(model)
        )
        return Scheduler(model.name, policy, supervisor, self.generation_metrics.for_model(model.name))

    def _streamer(self, model: ModelConfig, supervisor: Supervisor, batcher: Batcher) -> Scheduler | None:
        """Every handler model gets one: whether its predict yields is known once a worker is ready."""
        if model.handler is None or model.generation is not None:
            return None
        policy = GenerationPolicy(model.max_batch_size, model.max_queue_size, model.request_timeout_ms / 1000)
        streamer = Scheduler(model.name, policy, supervisor, self.generation_metrics.for_streams(model.name))
        supervisor.on_change = functools.partial(_wake_both, batcher, streamer)
        return streamer

    def _build_pipeline(self, model: ModelConfig) -> ServedModel:
        """A pipeline looks its steps up per request, so a reloaded step is used at once."""
        assert model.pipeline is not None
        step_done = self.pipeline_metrics.for_pipeline(model.name, [str(step.id) for step in model.pipeline])
        executor = PipelineExecutor(model, lambda name: self.find(name), step_done)
        return ServedModel(model, (), pipeline_steps(executor), executor, self.metrics.for_model(model.name))

    def route(self, path: str) -> ServedModel | None:
        """The model whose native route is `path`."""
        return self._routes.get(path)

    def find(self, name: str, version: str | None = None) -> ServedModel | None:
        """The served model a name (and version; none: the default) reach, if it is served."""
        served = self.versions.served(name, version)
        return self.models.get(served) if served is not None else None

    def _index_routes(self) -> None:
        self._routes = {m.config.url_path: m for m in self.models.values()}
        for path, served in self.versions.routes.items():  # a versioned model's own route: its default
            if served in self.models:
                self._routes[path] = self.models[served]

    @property
    def ready(self) -> bool:
        return self.pool.ready

    async def start(self) -> None:
        """Start every eager model's workers; raises StartupError if any model cannot boot."""
        _sweep_segments("left by an inferd no longer running")
        results = await asyncio.gather(*map(self.pool.start_model, self.models.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0] if isinstance(errors[0], StartupError) else StartupError(str(errors[0]))
        await self.admission.decoder_process.start()  # now, so the first large body does not wait for it
        log.info("all %d model(s) ready", len(self.models))

    async def stop(self) -> None:
        self.pool.close()
        await asyncio.gather(*(m.retire(0.0) for m in self.models.values()))
        self.shared_memory.close()
        self.admission.decoder_process.stop()
        _sweep_segments("not taken by a worker")

    async def reload(self, config: Config, slots: list[WorkerSlot]) -> ReloadResult:
        async with self._reload_lock:
            if config.server != self.config.server:
                log.warning("reload: changes to the server section take effect only after a restart")
            self.config = config.model_copy(update={"server": self.config.server})
            result = ReloadResult()
            wanted = {m.name: m for m in served_models(config.models)}
            for model in wanted.values():
                await self._apply(model, slots, result)
            # New versions are ready: the defaults move to them before any removed version drains.
            self.versions = VersionTable.of(config.models).within(self.models, self.versions)
            self._index_routes()
            for name in [n for n in self.models if n not in wanted]:
                result.removed.append(name)
                await self._swap(name, None)
            log.info("reload done: added %s, changed %s, removed %s, failed %s",
                     result.added, result.changed, result.removed, list(result.failed))  # fmt: skip
            return result

    async def _apply(self, model: ModelConfig, slots: list[WorkerSlot], result: ReloadResult) -> None:
        current = self.models.get(model.name)
        own_slots = tuple(s for s in slots if s.model == model.name)
        if current is not None and current.config == model and current.slots == own_slots:
            return
        fresh = self._build(model, slots)
        try:
            await self.pool.start_model(fresh, current)
        except StartupError as error:
            log.error("reload: %s; keeping the previous state of %r", error, model.name)
            result.failed[model.name] = str(error)
            await fresh.retire(0.0)
            return
        (result.changed if current else result.added).append(model.name)
        await self._swap(model.name, fresh)

    async def _swap(self, name: str, fresh: ServedModel | None) -> None:
        old = self.models.get(name)
        if fresh is not None:
            self.models[name] = fresh  # one step: the next request on this route goes to `fresh`
        else:
            del self.models[name]
        self._index_routes()
        if old is not None:
            successor = Successor(name, lambda: self.models.get(name) or self.find(public_name(name)))
            await old.retire(self.config.server.drain_timeout_s, successor)


def _sweep_segments(which: str) -> None:
    if swept := sweep_daemon(os.getpid()):
        log.info("unlinked %d shared-memory segment(s) %s", swept, which)


def _wake_both(batcher: Batcher, streamer: Scheduler) -> None:
    batcher.wake()
    streamer.wake()


def _scheduler_of(successor: Successor, which: str) -> Scheduler | None:
    model = successor.model()
    return getattr(model, which, None) if model is not None else None
