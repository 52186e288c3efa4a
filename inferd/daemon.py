"""The serving state of one running inferd: its supervisor, one batcher per model, its metrics.

Built from a validated config and a placement plan; the HTTP layer reads models from here, and
nothing here knows HTTP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from inferd.batching import Batcher, BatchPolicy
from inferd.config import Config, ModelConfig
from inferd.errors import StartupError
from inferd.messages import TensorInfo
from inferd.metrics import Metrics, ModelMetrics
from inferd.placement import WorkerSlot
from inferd.supervisor import ModelWorkers, Supervisor
from inferd.worker import WorkerSpec

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 10.0
DEFAULT_INPUTS = (TensorInfo("input", "FP32", (-1,)),)


@dataclass
class ServedModel:
    config: ModelConfig
    batcher: Batcher
    workers: ModelWorkers
    metrics: ModelMetrics

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def is_handler(self) -> bool:
        return self.config.handler is not None

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        """Declared in the YAML, else as the first ready worker found them in the model file."""
        info = self.workers.info
        if info and info.inputs:
            return info.inputs
        declared = self.config.inputs or ()
        return tuple(TensorInfo(s.name, s.datatype, s.shape) for s in declared) or DEFAULT_INPUTS

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self.workers.info.outputs if self.workers.info else ()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "route": self.config.url_path,
            "state": self.workers.state,
            "reason": self.workers.unavailable_reason,
            "device": self.config.device,
            "max_batch_size": self.config.max_batch_size,
            "queue_depth": self.batcher.queue_depth,
            "workers": [
                {
                    "slot": h.name, "pid": h.pid, "state": h.state, "busy": h.pending is not None,
                    "cpus": list(h.spec.slot.cpus), "threads": h.spec.slot.threads,
                }  # fmt: skip
                for h in self.workers.handles.values()
            ],
        }


class Daemon:
    def __init__(self, config: Config, slots: list[WorkerSlot]) -> None:
        self.config = config
        base_dir = Path(config.source).resolve().parent
        level = config.server.log_level
        specs = [WorkerSpec(slot, config.model(slot.model), base_dir, level) for slot in slots]
        self.supervisor = Supervisor(specs, on_change=self._wake_batcher)
        largest_batch = max(m.max_batch_size for m in config.models)
        self.metrics = Metrics(config.server.histogram_buckets_s, largest_batch)
        self.models = {m.name: self._serve(m) for m in config.models}
        self.metrics.watch(self.supervisor, {name: m.batcher for name, m in self.models.items()})
        self.startup_error: StartupError | None = None

    def _serve(self, model: ModelConfig) -> ServedModel:
        policy = BatchPolicy(
            model.max_batch_size, model.batch_timeout_ms / 1000, model.max_queue_size, model.request_timeout_ms / 1000
        )
        workers = self.supervisor.models[model.name]
        metrics = self.metrics.for_model(model.name)
        batcher = Batcher(model.name, policy, workers, metrics, self.supervisor.replace)  # type: ignore[arg-type]
        return ServedModel(model, batcher, workers, metrics)

    def _wake_batcher(self, model: str) -> None:
        served = self.models.get(model) if hasattr(self, "models") else None
        if served is not None:
            served.batcher.wake()

    @property
    def ready(self) -> bool:
        return all(m.workers.ready_count for m in self.models.values())

    async def start(self) -> None:
        """Start batchers and workers; raises StartupError if a model cannot boot."""
        for model in self.models.values():
            model.batcher.start()
        await self.supervisor.start()
        log.info("all %d model(s) ready", len(self.models))

    async def stop(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()
        await self.supervisor.stop(WORKER_STOP_TIMEOUT_S)
