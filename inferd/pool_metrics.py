"""The model pool's metrics, in the daemon's one registry: loads, unloads and evictions as they
happen, and each model's loaded state and measured memory read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# A load is a worker's boot, import and warmup: from a fraction of a second to minutes.
LOAD_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class PoolState:
    """One model as the pool sees it at a scrape."""

    name: str
    loaded: bool
    footprint: Mapping[str, int]  # bytes by device, as last measured


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry, states: Callable[[], Iterable[PoolState]]) -> None:
        self._loads = Counter(
            "inferd_model_loads", "Model loads that completed (workers started), by what asked: "
            "start, request (a lazy model's first), repository, reload.", ["model", "cause"], registry=registry,
        )  # fmt: skip
        self._unloads = Counter(
            "inferd_model_unloads", "Model unloads (workers ended), by cause: repository, idle, eviction, budget.",
            ["model", "cause"], registry=registry,
        )  # fmt: skip
        self._evictions = Counter(
            "inferd_model_evictions", "Idle models unloaded to make room for another under the pool's budgets.",
            ["model"], registry=registry,
        )  # fmt: skip
        self._load_duration = Histogram(
            "inferd_model_load_duration_seconds", "Time from a load's start to every worker ready.",
            ["model"], buckets=LOAD_BUCKETS_S, registry=registry,
        )  # fmt: skip
        registry.register(_PoolCollector(states))

    def loaded(self, model: str, cause: str, duration_s: float) -> None:
        self._loads.labels(model, cause).inc()
        self._load_duration.labels(model).observe(duration_s)

    def unloaded(self, model: str, cause: str) -> None:
        self._unloads.labels(model, cause).inc()
        if cause == "eviction":
            self._evictions.labels(model).inc()


class _PoolCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[PoolState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily(
            "inferd_model_loaded", "1 while the model's workers are loaded (or loading), 0 when unloaded.",
            labels=["model"],
        )  # fmt: skip
        memory = GaugeMetricFamily(
            "inferd_model_memory_bytes",
            "What the model's workers held when last measured, by device (the pool's budget share).",
            labels=["model", "device"],
        )
        for state in self._states():
            loaded.add_metric([state.name], 1 if state.loaded else 0)
            for device, size in sorted(state.footprint.items()):
                memory.add_metric([state.name, device], size)
        yield from (loaded, memory)
