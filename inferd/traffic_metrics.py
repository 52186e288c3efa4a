"""The series of traffic splits, shadow copies and versions, beside the per-model ones of
inferd/metrics.py: every request a split routes counted by split, variant and status; every shadow
copy by outcome, with its latency; and, read at scrape time, each split's weights and each
version's name, version and whether it is its model's default."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferd.traffic_split import SplitRouter
from inferd.versions import SEPARATOR

if TYPE_CHECKING:
    from inferd.daemon import ServedModel
    from inferd.versions import VersionTable

SHADOW_OUTCOMES = ("ok", "error", "dropped")


class TrafficMetrics:
    def __init__(self, registry: CollectorRegistry, latency_buckets_s: tuple[float, ...]) -> None:
        self._split_requests = Counter(
            "inferd_split_requests",
            "Requests a traffic split sent to each variant, by HTTP status code.",
            ["split", "variant", "code"],
            registry=registry,
        )
        self._shadow_requests = Counter(
            "inferd_shadow_requests",
            "Shadow copies by outcome: ok, error (the candidate failed), dropped (candidate saturated or unavailable).",
            ["split", "variant", "outcome"],
            registry=registry,
        )
        self._shadow_duration = Histogram(
            "inferd_shadow_duration_seconds",
            "Time a shadow copy took at its candidate, answered or failed.",
            ["split", "variant"],
            buckets=latency_buckets_s,
            registry=registry,
        )
        self._registry = registry

    def watch(self, models: Callable[[], Mapping[str, ServedModel]], versions: Callable[[], VersionTable]) -> None:
        self._registry.register(TrafficCollector(models, versions))

    def split_answered(self, split: str, variant: str, code: int) -> None:
        self._split_requests.labels(split, variant, str(code)).inc()

    def shadow_dropped(self, split: str, variant: str) -> None:
        self._shadow_requests.labels(split, variant, "dropped").inc()

    def shadow_done(self, split: str, variant: str, outcome: str, duration_s: float) -> None:
        self._shadow_requests.labels(split, variant, outcome).inc()
        self._shadow_duration.labels(split, variant).observe(duration_s)


class TrafficCollector(Collector):
    """The splits' weights and the versions, read from whatever the last reload left."""

    def __init__(self, models: Callable[[], Mapping[str, ServedModel]], versions: Callable[[], VersionTable]) -> None:
        self._models = models
        self._versions = versions

    def collect(self) -> Iterator[Metric]:
        weights = GaugeMetricFamily(
            "inferd_split_weight", "Each traffic split variant's configured weight.", labels=["split", "variant"]
        )
        info = GaugeMetricFamily(
            "inferd_model_version_info",
            "1 for each served version: its model label, the model's name, the version, and whether it is the default.",
            labels=["model", "name", "version", "default"],
        )
        table = self._versions()
        for served, model in self._models().items():
            if isinstance(model.batcher, SplitRouter):
                for variant in model.batcher.variants:
                    weights.add_metric([served, variant.label], variant.weight)
            if SEPARATOR in served:
                name, version = served.split(SEPARATOR, 1)
                info.add_metric([served, name, version, str(table.default(name) == version).lower()], 1)
        yield from (weights, info)
