"""Every metric inferd exports, declared once, in one registry owned by the main process.

Event figures (requests, latencies, batch sizes) are recorded as they happen. State figures (queue
depth, workers, CPU, memory, GPU memory) are read at scrape time by a collector, from the batchers,
the supervisor's bookkeeping, psutil and NVML: a scrape never waits on a worker.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferd import __version__, gpu
from inferd.batching import Batcher
from inferd.messages import GpuMemory

if TYPE_CHECKING:
    from inferd.admission import Admission
    from inferd.connections import Listener
    from inferd.daemon import ServedModel
    from inferd.supervisor import WorkerHandle

WORKER_STATES = ("starting", "ready", "stopping", "exited")


def _batch_buckets(largest: int) -> tuple[float, ...]:
    sizes, size = [], 1
    while size < largest:
        sizes.append(float(size))
        size *= 2
    return (*sizes, float(largest))


class Metrics:
    def __init__(self, latency_buckets_s: tuple[float, ...], largest_batch: int) -> None:
        self.registry = CollectorRegistry()
        self._tallies: dict[str, InferenceTally] = {}
        self.requests = Counter(
            "inferd_requests",
            "Requests answered, by protocol (http, grpc) and the HTTP status code of the outcome.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.requests_cancelled = Counter(
            "inferd_requests_cancelled",
            "Queued requests dropped before compute because their client disconnected.",
            ["model"],
            registry=self.registry,
        )
        self.requests_promoted = Counter(
            "inferd_requests_promoted",
            "Queued requests that waited past priority_promote_after_ms and went ahead of higher priorities.",
            ["model"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "inferd_request_duration_seconds",
            "End-to-end request time inside the server, by protocol (http, grpc).",
            ["model", "protocol"],
            buckets=latency_buckets_s,
            registry=self.registry,
        )
        self.queue_duration = self._histogram(
            "inferd_queue_duration_seconds", "Time from arrival to dispatch in a batch.", latency_buckets_s
        )
        self.worker_wait = self._histogram(
            "inferd_worker_wait_seconds", "Part of the queue time spent waiting for a free worker.", latency_buckets_s
        )
        self.batch_wait = self._histogram(
            "inferd_batch_wait_seconds",
            "Part of the queue time spent, with a worker idle, waiting for the batch to fill.",
            latency_buckets_s,
        )
        self.inference_duration = self._histogram(
            "inferd_inference_duration_seconds", "Compute time of each batch in its worker.", latency_buckets_s
        )
        self.batch_size = self._histogram(
            "inferd_batch_size", "Items per batch sent to a worker.", _batch_buckets(largest_batch)
        )
        self.worker_exits = Counter(
            "inferd_worker_exits", "Workers that exited unasked, by cause: oom_kill, a signal's name, exit_code.",
            ["model", "cause"], registry=self.registry,
        )  # fmt: skip
        self.worker_memory_replacements = Counter(
            "inferd_worker_memory_replacements", "Workers replaced for passing max_worker_memory_mb.",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.channel_bytes = Counter(
            "inferd_channel_bytes", "Tensor bytes between the main process and workers, by direction and path "
            "(socket, segment: shared memory made for them, forwarded: a segment one worker made, read in place by "
            "another, client_region: read by the worker from the client's region).",
            ["model", "direction", "path"], registry=self.registry,
        )  # fmt: skip
        build = Gauge(
            "inferd_build_info", "inferd build: always 1.", ["version", "torch", "python"], registry=self.registry
        )
        build.labels(__version__, _torch_version(), platform.python_version()).set(1)

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, ["model"], buckets=buckets, registry=self.registry)

    def for_model(self, model: str) -> ModelMetrics:
        # A reload's new generation keeps the model's tally, as the labelled series go on counting.
        return ModelMetrics(self, model, self._tallies.setdefault(model, InferenceTally()))

    def watch(self, models: Callable[[], Mapping[str, ServedModel]]) -> StateCollector:
        collector = StateCollector(models)
        self.registry.register(collector)
        return collector

    def watch_connections(self, listeners: list[Listener]) -> None:
        self.registry.register(ConnectionCollector(listeners))

    def watch_request_bytes(self, admission: Admission, models: Callable[[], Mapping[str, ServedModel]]) -> None:
        self.registry.register(RequestBytesCollector(admission, models))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _torch_version() -> str:
    try:
        return metadata.version("torch")  # read from the install: the main process never imports torch
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Duration:
    """How many times something happened and how long it took in all."""

    count: int = 0
    total_s: float = 0.0

    def add(self, duration_s: float, times: int = 1) -> None:
        self.count += times
        self.total_s += duration_s * times


@dataclass
class InferenceTally:
    """One model's running totals, recorded at the same events as its histograms, for the v2
    statistics extension (Triton's per-model figures): per request, and per batch size."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)  # one per request, its batch's compute time
    by_batch_size: dict[int, Duration] = field(default_factory=dict)  # one per batch
    inference_count: int = 0  # items computed
    execution_count: int = 0  # batches computed
    last_inference_ms: int = 0  # wall clock (ms since the epoch) of the last answered request


class ModelMetrics:
    """One model's event metrics, with its label bound once (the batcher's observer)."""

    def __init__(self, metrics: Metrics, model: str, tally: InferenceTally | None = None) -> None:
        self._metrics = metrics
        self._model = model
        self.tally = tally or InferenceTally()
        self._request_duration: dict[str, Histogram] = {}  # by protocol: its child of the histogram
        self._queue_duration = metrics.queue_duration.labels(model)
        self._worker_wait = metrics.worker_wait.labels(model)
        self._batch_wait = metrics.batch_wait.labels(model)
        self._inference_duration = metrics.inference_duration.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._cancelled = metrics.requests_cancelled.labels(model)
        self._promoted = metrics.requests_promoted.labels(model)

    def request_done(self, protocol: str, code: int, duration_s: float) -> None:
        # `protocol` is the transport the client spoke, "http" or "grpc", not the API (native, v2 and
        # OpenAI routes are all "http": their paths tell them apart), so the label keeps two values.
        # A series appears at its first request: a daemon without gRPC shows no grpc series.
        self._metrics.requests.labels(self._model, protocol, str(code)).inc()
        duration = self._request_duration.get(protocol)
        if duration is None:  # a label lookup per request costs more than the observation
            duration = self._request_duration[protocol] = self._metrics.request_duration.labels(self._model, protocol)
        duration.observe(duration_s)
        (self.tally.success if code == 200 else self.tally.fail).add(duration_s)
        self.tally.last_inference_ms = int(time.time() * 1000)

    def batch_dispatched(self, items: int, worker_waits_s: list[float], batch_waits_s: list[float]) -> None:
        self._batch_size.observe(items)
        for worker_wait_s, batch_wait_s in zip(worker_waits_s, batch_waits_s):
            self._queue_duration.observe(worker_wait_s + batch_wait_s)
            self._worker_wait.observe(worker_wait_s)
            self._batch_wait.observe(batch_wait_s)
            self.tally.queue.add(worker_wait_s + batch_wait_s)

    def batch_done(self, compute_s: float, items: int = 1, requests: int = 1) -> None:
        self._inference_duration.observe(compute_s)
        tally = self.tally
        tally.compute.add(compute_s, requests)
        tally.by_batch_size.setdefault(items, Duration()).add(compute_s)
        tally.inference_count += items
        tally.execution_count += 1

    def request_cancelled(self) -> None:
        self._cancelled.inc()

    def requests_promoted(self, count: int) -> None:
        self._promoted.inc(count)

    def worker_exited(self, cause: str) -> None:
        self._metrics.worker_exits.labels(self._model, cause).inc()

    def worker_replaced_for_memory(self) -> None:
        self._metrics.worker_memory_replacements.labels(self._model).inc()

    def channel_bytes(self, direction: str, path: str, nbytes: int) -> None:
        self._metrics.channel_bytes.labels(self._model, direction, path).inc(nbytes)


@dataclass
class _SlotTotals:
    """CPU seconds of a slot's earlier processes, so the counter survives restarts."""

    finished_cpu_s: float = 0.0
    last_pid: int | None = None
    last_cpu_s: float = 0.0
    gpu: GpuMemory | None = field(default=None)


class StateCollector(Collector):
    """Reads the current models (whatever generation a reload left) at each scrape."""

    def __init__(self, models: Callable[[], Mapping[str, ServedModel]]) -> None:
        self._models = models
        self._slots: dict[tuple[str, str], _SlotTotals] = {}

    def record_gpu(self, handle: WorkerHandle, reading: GpuMemory) -> None:
        self._slot(handle).gpu = reading

    def gpu_reading(self, handle: WorkerHandle) -> GpuMemory | None:
        return self._slot(handle).gpu

    def forget_gpu(self, model: str) -> None:
        """The model's workers ended (unloaded): their last readings are no longer held memory."""
        for (name, _), totals in self._slots.items():
            if name == model:
                totals.gpu = None

    def gpu_readings(self) -> dict[tuple[str, str], GpuMemory]:
        """The last GPU memory reading of each (model, worker slot) that sent one (the status page)."""
        return {key: totals.gpu for key, totals in self._slots.items() if totals.gpu is not None}

    def _slot(self, handle: WorkerHandle) -> _SlotTotals:
        return self._slots.setdefault((handle.spec.model.name, handle.name), _SlotTotals())

    def collect(self) -> Iterator[Metric]:
        yield from self._model_families()
        yield from self._worker_families()
        yield from self._gpu_families()

    def _model_families(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("inferd_queue_depth", "Requests waiting for a batch.", labels=["model"])
        inflight = GaugeMetricFamily(
            "inferd_inflight_requests", "Requests accepted and not yet answered.", labels=["model"]
        )
        ready = GaugeMetricFamily("inferd_model_ready", "1 when the model has a ready worker.", labels=["model"])
        workers = GaugeMetricFamily("inferd_workers", "Worker processes by state.", labels=["model", "state"])
        restarts = CounterMetricFamily("inferd_worker_restarts", "Worker restarts.", labels=["model"])
        size_cap = GaugeMetricFamily(
            "inferd_batch_size_cap",
            "The most items a batch takes under load: max_batch_size, or less where measured cheaper per item.",
            labels=["model"],
        )
        for name, model in self._models().items():
            group = model.workers
            depth.add_metric([name], model.batcher.queue_depth)
            inflight.add_metric([name], model.batcher.inflight_requests)
            if isinstance(model.batcher, Batcher):  # pipelines, splits and successors batch nothing
                size_cap.add_metric([name], model.batcher.size_cap.cap)
            ready.add_metric([name], 1 if group.ready_count else 0)
            states = [h.state for h in group.handles.values()]
            for state in WORKER_STATES:
                workers.add_metric([name, state], states.count(state))
            restarts.add_metric([name], group.restarts_total)
        yield from (depth, inflight, ready, workers, restarts, size_cap)

    def _worker_families(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "inferd_worker_cpu_seconds", "CPU time of each worker slot.", labels=["model", "worker"]
        )
        memory = GaugeMetricFamily(
            "inferd_worker_resident_memory_bytes", "Resident memory of each worker.", labels=["model", "worker"]
        )
        for handle in (h for m in self._models().values() for h in m.workers.handles.values()):
            totals = self._slot(handle)
            labels = [handle.spec.model.name, handle.name]
            rss = self._sample_process(handle, totals)
            cpu.add_metric(labels, totals.finished_cpu_s + totals.last_cpu_s)
            if rss is not None:
                memory.add_metric(labels, rss)
        yield from (cpu, memory)

    def _sample_process(self, handle: WorkerHandle, totals: _SlotTotals) -> int | None:
        if totals.last_pid != handle.pid:  # a new process in this slot: bank the old one's CPU
            totals.finished_cpu_s += totals.last_cpu_s
            totals.last_pid, totals.last_cpu_s = handle.pid, 0.0
        try:
            process = psutil.Process(handle.pid)
            with process.oneshot():
                times = process.cpu_times()
                totals.last_cpu_s = times.user + times.system
                return int(process.memory_info().rss)
        except psutil.Error:  # exited between the listing and the read
            return None

    def _gpu_families(self) -> Iterator[Metric]:
        readings = [(key, totals.gpu) for key, totals in self._slots.items() if totals.gpu is not None]
        if not readings:
            return  # no model on a GPU: these series are absent, not zero
        labels = ["model", "device", "worker"]
        allocated = GaugeMetricFamily(
            "inferd_gpu_memory_allocated_bytes", "GPU memory allocated by torch in each worker.", labels=labels
        )
        reserved = GaugeMetricFamily(
            "inferd_gpu_memory_reserved_bytes",
            "GPU memory reserved by torch's allocator in each worker.",
            labels=labels,
        )
        for (model, worker), reading in readings:
            assert reading is not None
            allocated.add_metric([model, reading.device, worker], reading.allocated_bytes)
            reserved.add_metric([model, reading.device, worker], reading.reserved_bytes)
        used = GaugeMetricFamily("inferd_gpu_memory_used_bytes", "GPU memory in use on the device.", labels=["device"])
        total = GaugeMetricFamily("inferd_gpu_memory_total_bytes", "GPU memory of the device.", labels=["device"])
        for device in gpu.device_memory():
            used.add_metric([device.device], device.used_bytes)
            total.add_metric([device.device], device.total_bytes)
        yield from (allocated, reserved, used, total)


class ConnectionCollector(Collector):
    """Open connections and the ones inferd closed, read from each listener (api, metrics) at scrape."""

    def __init__(self, listeners: list[Listener]) -> None:
        self._listeners = listeners

    def collect(self) -> Iterator[Metric]:
        open_now = GaugeMetricFamily("inferd_connections", "Open HTTP connections.", labels=["listener"])
        closed = CounterMetricFamily(
            "inferd_connections_closed",
            "Connections inferd closed or refused: over_limit, header_timeout, header_too_large, malformed, idle.",
            labels=["listener", "reason"],
        )
        for listener in self._listeners:
            open_now.add_metric([listener.name], listener.open_connections)
            for reason, count in sorted(listener.closed.items()):
                closed.add_metric([listener.name, reason], count)
        yield from (open_now, closed)


class RequestBytesCollector(Collector):
    """The memory admission's level, read at scrape time: nothing on the request path updates it."""

    def __init__(self, admission: Admission, models: Callable[[], Mapping[str, ServedModel]]) -> None:
        self._admission = admission
        self._models = models

    def collect(self) -> Iterator[Metric]:
        admission = self._admission
        yield GaugeMetricFamily(
            "inferd_request_bytes_held",
            "Bytes of request bodies and decoded payloads held in the main process (receiving, queued, in flight).",
            value=admission.held_bytes,
        )
        yield GaugeMetricFamily(
            "inferd_request_bytes_held_limit",
            "The budget for them (max_request_bytes_held).",
            value=admission.limit_bytes,
        )
        by_model = GaugeMetricFamily(
            "inferd_model_request_bytes_held", "Request bytes held for each model's requests.", labels=["model"]
        )
        for name in sorted({*self._models(), *admission.held_by_model}):
            by_model.add_metric([name], admission.held_by_model.get(name, 0))
        yield by_model
