"""inferd's metric interface as seen from outside, and a stand-in registry that exports it.

`METRIC_NAMES` lists every series family inferd's /metrics promises; the dashboard and the alert
rules may use these and nothing else. `standin_registry()` fills a fresh prometheus_client registry
with plausible values for two models (one on CPU, one on a GPU) so that Prometheus can scrape every
family and each dashboard expression can be shown to return data without running inferd itself.
The real exporter lives in the package; this one exists only for the tests here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

# Family names as they appear in PromQL (histograms without their _bucket/_sum/_count suffixes).
METRIC_NAMES = frozenset(
    {
        "inferd_requests_total",
        "inferd_request_duration_seconds",
        "inferd_queue_duration_seconds",
        "inferd_worker_wait_seconds",
        "inferd_batch_wait_seconds",
        "inferd_inference_duration_seconds",
        "inferd_batch_size",
        "inferd_queue_depth",
        "inferd_inflight_requests",
        "inferd_model_ready",
        "inferd_workers",
        "inferd_worker_restarts_total",
        "inferd_worker_cpu_seconds_total",
        "inferd_worker_resident_memory_bytes",
        "inferd_gpu_memory_allocated_bytes",
        "inferd_gpu_memory_reserved_bytes",
        "inferd_gpu_memory_used_bytes",
        "inferd_gpu_memory_total_bytes",
        "inferd_build_info",
        "inferd_requests_cancelled_total",
        "inferd_worker_exits_total",
        "inferd_worker_memory_replacements_total",
        "inferd_connections",
        "inferd_connections_closed_total",
        "inferd_request_bytes_held",
        "inferd_request_bytes_held_limit",
        "inferd_model_request_bytes_held",
        "inferd_split_requests_total",
        "inferd_split_weight",
        "inferd_shadow_requests_total",
        "inferd_shadow_duration_seconds",
        "inferd_model_version_info",
        "inferd_rate_limited_total",
        "inferd_requests_promoted_total",
        "inferd_channel_bytes_total",
        "inferd_time_to_first_token_seconds",
        "inferd_time_per_output_token_seconds",
        "inferd_prompt_tokens_total",
        "inferd_generated_tokens_total",
        "inferd_sequences_cancelled_total",
        "inferd_running_sequences",
        "inferd_queued_sequences",
        "inferd_pipeline_step_seconds",
        "inferd_model_loads_total",
        "inferd_model_unloads_total",
        "inferd_model_evictions_total",
        "inferd_model_load_duration_seconds",
        "inferd_model_loaded",
        "inferd_model_memory_bytes",
    }
)

# Exported once the event they count has happened (a counter whose labels only an event gives).
EVENT_METRIC_NAMES = frozenset(
    {
        "inferd_worker_exits_total",
        "inferd_worker_memory_replacements_total",
        "inferd_connections_closed_total",
        "inferd_rate_limited_total",
        "inferd_channel_bytes_total",
        "inferd_model_unloads_total",
        "inferd_model_evictions_total",
    }
)

# Exported only where a model runs on a GPU.
GPU_METRIC_NAMES = frozenset(
    {
        "inferd_gpu_memory_allocated_bytes",
        "inferd_gpu_memory_reserved_bytes",
        "inferd_gpu_memory_used_bytes",
        "inferd_gpu_memory_total_bytes",
    }
)

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GIB = 1024**3


def family_of(series_name: str) -> str:
    """The interface family a PromQL metric name belongs to (strips histogram suffixes)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = series_name.removesuffix(suffix)
        if base != series_name and base in METRIC_NAMES:
            return base
    return series_name


def exported_families(exposition: str) -> set[str]:
    """The family names in Prometheus exposition text, spelled as PromQL and METRIC_NAMES spell
    them (a counter with its _total). prometheus_client's *_created gauges are left out."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif not family.name.endswith("_created"):
            names.add(family.name)
    return names


def standin_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    _add_request_metrics(registry)
    _add_worker_metrics(registry)
    _add_gpu_metrics(registry)
    _add_front_metrics(registry)
    _add_traffic_metrics(registry)
    _add_qos_metrics(registry)
    _add_generation_metrics(registry)
    _add_pipeline_metrics(registry)
    _add_pool_metrics(registry)
    info = Gauge(
        "inferd_build_info", "Build information", ["version", "torch", "python"], registry=registry
    )
    info.labels("0.1.0", "2.13.0", "3.11.2").set(1)
    return registry


REQUEST_DURATION = "inferd_request_duration_seconds"  # by protocol, as inferd's, unlike the other histograms


def _add_request_metrics(registry: CollectorRegistry) -> None:
    requests = Counter("inferd_requests", "Requests answered", ["model", "protocol", "code"], registry=registry)
    durations = {
        name: Histogram(
            name, help_text, ["model", "protocol"] if name == REQUEST_DURATION else ["model"], registry=registry
        )
        for name, help_text in (
            (REQUEST_DURATION, "Time from request received to answer sent"),
            ("inferd_queue_duration_seconds", "Time a request waited before its batch started"),
            ("inferd_worker_wait_seconds", "Queue time waiting for a free worker"),
            ("inferd_batch_wait_seconds", "Queue time waiting, with a worker idle, for the batch to fill"),
            ("inferd_inference_duration_seconds", "Compute time per batch in a worker"),
        )
    }
    batch_size = Histogram(
        "inferd_batch_size",
        "Items per batch",
        ["model"],
        buckets=BATCH_SIZE_BUCKETS,
        registry=registry,
    )
    queue_depth = Gauge("inferd_queue_depth", "Requests waiting", ["model"], registry=registry)
    inflight = Gauge(
        "inferd_inflight_requests",
        "Requests admitted and not yet answered",
        ["model"],
        registry=registry,
    )
    for model, seconds, batch in (("tiny", 0.004, 8), ("minilm", 0.03, 4)):
        requests.labels(model, "http", "200").inc(100)
        requests.labels(model, "grpc", "200").inc(40)
        requests.labels(model, "http", "429").inc(2)
        requests.labels(model, "grpc", "503").inc(1)
        for name, histogram in durations.items():
            for labels in ((model, "http"), (model, "grpc")) if name == REQUEST_DURATION else ((model,),):
                histogram.labels(*labels).observe(seconds)
        batch_size.labels(model).observe(batch)
        queue_depth.labels(model).set(3)
        inflight.labels(model).set(5)


def _add_worker_metrics(registry: CollectorRegistry) -> None:
    ready = Gauge(
        "inferd_model_ready", "1 when the model has a ready worker", ["model"], registry=registry
    )
    workers = Gauge("inferd_workers", "Workers by state", ["model", "state"], registry=registry)
    restarts = Counter("inferd_worker_restarts", "Worker restarts", ["model"], registry=registry)
    cpu = Counter(
        "inferd_worker_cpu_seconds", "Worker CPU time", ["model", "worker"], registry=registry
    )
    rss = Gauge(
        "inferd_worker_resident_memory_bytes",
        "Worker resident memory",
        ["model", "worker"],
        registry=registry,
    )
    for model in ("tiny", "minilm"):
        ready.labels(model).set(1)
        workers.labels(model, "ready").set(2)
        workers.labels(model, "starting").set(0)
        restarts.labels(model).inc(0)
        for worker in ("0", "1"):
            cpu.labels(model, worker).inc(12.5)
            rss.labels(model, worker).set(0.5 * GIB)


def _add_gpu_metrics(registry: CollectorRegistry) -> None:
    labels = ["model", "device", "worker"]
    allocated = Gauge(
        "inferd_gpu_memory_allocated_bytes", "Memory held by tensors", labels, registry=registry
    )
    reserved = Gauge(
        "inferd_gpu_memory_reserved_bytes",
        "Memory held by the caching allocator",
        labels,
        registry=registry,
    )
    used = Gauge(
        "inferd_gpu_memory_used_bytes", "Device memory in use", ["device"], registry=registry
    )
    total = Gauge("inferd_gpu_memory_total_bytes", "Device memory", ["device"], registry=registry)
    allocated.labels("minilm", "0", "0").set(1 * GIB)
    reserved.labels("minilm", "0", "0").set(2 * GIB)
    used.labels("0").set(3 * GIB)
    total.labels("0").set(80 * GIB)


def _add_front_metrics(registry: CollectorRegistry) -> None:
    """Connections, memory admission, cancellations and unasked worker exits."""
    cancelled = Counter("inferd_requests_cancelled", "Queued requests dropped", ["model"], registry=registry)
    exits = Counter("inferd_worker_exits", "Unasked worker exits", ["model", "cause"], registry=registry)
    replaced = Counter(
        "inferd_worker_memory_replacements", "Workers replaced for memory", ["model"], registry=registry
    )
    connections = Gauge("inferd_connections", "Open connections", ["listener"], registry=registry)
    closed = Counter(
        "inferd_connections_closed", "Connections closed", ["listener", "reason"], registry=registry
    )
    held = Gauge("inferd_request_bytes_held", "Request bytes held", registry=registry)
    limit = Gauge("inferd_request_bytes_held_limit", "Their budget", registry=registry)
    by_model = Gauge(
        "inferd_model_request_bytes_held", "Request bytes held per model", ["model"], registry=registry
    )
    channel = Counter(
        "inferd_channel_bytes", "Tensor bytes to and from workers", ["model", "direction", "path"], registry=registry
    )
    channel.labels("tiny", "to_worker", "segment").inc(4 * 1024**2)
    for model in ("tiny", "minilm"):
        cancelled.labels(model).inc(3)
        exits.labels(model, "SIGKILL").inc(1)
        replaced.labels(model).inc(1)
        by_model.labels(model).set(8 * 1024**2)
    connections.labels("api").set(12)
    closed.labels("api", "header_timeout").inc(4)
    held.set(16 * 1024**2)
    limit.set(GIB)


def _add_qos_metrics(registry: CollectorRegistry) -> None:
    """Rate limits' refusals and priority promotions."""
    limited = Counter(
        "inferd_rate_limited", "Requests refused by a rate limit", ["key", "model", "limit"], registry=registry
    )
    promoted = Counter(
        "inferd_requests_promoted", "Requests promoted past higher priorities", ["model"], registry=registry
    )
    limited.labels("tenant-a", "tiny", "key").inc(7)
    limited.labels("tenant-b", "-", "key").inc(1)
    for model in ("tiny", "minilm"):
        limited.labels("tenant-b", model, "model").inc(2)
        promoted.labels(model).inc(4)
def _add_generation_metrics(registry: CollectorRegistry) -> None:
    """Generative models' figures (inferd/generation/metrics.py)."""
    labels = ["model"]
    first_token = Histogram("inferd_time_to_first_token_seconds", "To first token", labels, registry=registry)
    per_token = Histogram("inferd_time_per_output_token_seconds", "Between tokens", labels, registry=registry)
    prompt = Counter("inferd_prompt_tokens", "Prompt tokens prefilled", labels, registry=registry)
    generated = Counter("inferd_generated_tokens", "Tokens generated", labels, registry=registry)
    cancelled = Counter("inferd_sequences_cancelled", "Sequences stopped early", labels, registry=registry)
    running = Gauge("inferd_running_sequences", "Sequences running", labels, registry=registry)
    queued = Gauge("inferd_queued_sequences", "Sequences waiting", labels, registry=registry)
    for model in ("tiny", "minilm"):
        first_token.labels(model).observe(0.08)
        per_token.labels(model).observe(0.02)
        prompt.labels(model).inc(1200)
        generated.labels(model).inc(6400)
        cancelled.labels(model).inc(2)
        running.labels(model).set(8)
        queued.labels(model).set(1)


def _add_pipeline_metrics(registry: CollectorRegistry) -> None:
    """Two steps of a pipeline (labelled as one of the stand-in's models, which the dashboard's
    model variable lists)."""
    steps = Histogram(
        "inferd_pipeline_step_seconds", "Time of each pipeline step", ["model", "step"], registry=registry
    )
    for step, seconds in (("decode", 0.004), ("network", 0.02)):
        steps.labels("tiny", step).observe(seconds)


def _add_pool_metrics(registry: CollectorRegistry) -> None:
    """The model pool: "tiny" loaded eagerly at start, "minilm" lazy, loaded, evicted, loaded again."""
    loads = Counter("inferd_model_loads", "Model loads", ["model", "cause"], registry=registry)
    unloads = Counter("inferd_model_unloads", "Model unloads", ["model", "cause"], registry=registry)
    evictions = Counter("inferd_model_evictions", "Models evicted", ["model"], registry=registry)
    load_time = Histogram(
        "inferd_model_load_duration_seconds", "Load time", ["model"], registry=registry
    )
    loaded = Gauge("inferd_model_loaded", "1 while loaded", ["model"], registry=registry)
    memory = Gauge(
        "inferd_model_memory_bytes", "Measured memory", ["model", "device"], registry=registry
    )
    loads.labels("tiny", "start").inc()
    loads.labels("minilm", "request").inc(2)
    unloads.labels("minilm", "eviction").inc()
    evictions.labels("minilm").inc()
    load_time.labels("tiny").observe(1.5)
    load_time.labels("minilm").observe(4.0)
    for model in ("tiny", "minilm"):
        loaded.labels(model).set(1)
        memory.labels(model, "cpu").set(0.25 * GIB)
    memory.labels("minilm", "cuda:0").set(1 * GIB)


def _add_traffic_metrics(registry: CollectorRegistry) -> None:
    """A split "ab" sending 90/10 to two models, shadowing to a third, and one served version."""
    requests = Counter("inferd_split_requests", "Requests per variant", ["split", "variant", "code"], registry=registry)
    weight = Gauge("inferd_split_weight", "Variant weight", ["split", "variant"], registry=registry)
    shadow = Counter("inferd_shadow_requests", "Shadow copies", ["split", "variant", "outcome"], registry=registry)
    shadow_duration = Histogram(
        "inferd_shadow_duration_seconds", "Shadow latency", ["split", "variant"], registry=registry
    )
    version = Gauge(
        "inferd_model_version_info",
        "Served versions",
        ["model", "name", "version", "default"],
        registry=registry,
    )
    for variant, share in (("tiny", 90), ("minilm", 10)):
        requests.labels("ab", variant, "200").inc(share)
        weight.labels("ab", variant).set(share)
    shadow.labels("ab", "tiny", "ok").inc(5)
    shadow.labels("ab", "tiny", "dropped").inc(1)
    shadow_duration.labels("ab", "tiny").observe(0.004)
    version.labels("minilm", "minilm", "2", "true").set(1)
