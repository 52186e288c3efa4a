"""/metrics as Prometheus reads it: the figures agree with what the test did."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until

CONFIG = """
models:
  - name: echo
    handler: {HANDLERS}:Echo
    max_batch_size: 4
    batch_timeout_ms: 50
    handler_args: {delay_s: 0.05}
"""


def samples(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = server.get("/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def test_counts_latencies_and_batches_agree_with_the_requests_sent(serve) -> None:
    server = serve(CONFIG)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda n: server.post("/models/echo/predict", {"inputs": [n]}), range(10)))
    sizes = [a.json()["outputs"][0]["batch_size"] for a in answers]
    batches = round(sum(1 / size for size in sizes))
    server.post("/models/echo/predict", {"inputs": []})  # one 400
    found = samples(server)

    assert value(found, "inferd_requests_total", model="echo", protocol="http", code="200") == 10
    assert value(found, "inferd_requests_total", model="echo", protocol="http", code="400") == 1
    assert value(found, "inferd_request_duration_seconds_count", model="echo", protocol="http") == 11
    assert value(found, "inferd_queue_duration_seconds_count", model="echo") == 10
    assert value(found, "inferd_batch_size_count", model="echo") == batches
    assert value(found, "inferd_batch_size_sum", model="echo") == 10
    assert value(found, "inferd_inference_duration_seconds_count", model="echo") == batches
    assert value(found, "inferd_inference_duration_seconds_sum", model="echo") >= 0.05 * batches
    assert value(found, "inferd_request_duration_seconds_bucket", model="echo", protocol="http", le="+Inf") == 11
    assert value(found, "inferd_queue_depth", model="echo") == 0
    assert value(found, "inferd_batch_size_cap", model="echo") == 4  # a fixed cost per batch: never capped
    assert value(found, "inferd_inflight_requests", model="echo") == 0
    assert value(found, "inferd_model_ready", model="echo") == 1
    assert value(found, "inferd_workers", model="echo", state="ready") == 1
    assert value(found, "inferd_worker_restarts_total", model="echo") == 0
    assert value(found, "inferd_worker_cpu_seconds_total", model="echo", worker="cpu:0/0") >= 0  # a fork: little
    assert value(found, "inferd_worker_resident_memory_bytes", model="echo", worker="cpu:0/0") > 10_000_000
    assert any(name == "inferd_build_info" for name, _ in found)
    assert not any(name.startswith("inferd_gpu_") for name, _ in found)  # absent, not zero, without a GPU


def test_a_killed_worker_shows_in_restarts_and_readiness(serve) -> None:
    server = serve(CONFIG)
    cpu_before = value(samples(server), "inferd_worker_cpu_seconds_total", model="echo", worker="cpu:0/0")
    (pid,) = server.worker_pids("echo")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: value(samples(server), "inferd_worker_restarts_total", model="echo") == 1, 30, "restart counted")
    wait_until(lambda: server.worker_pids("echo") not in ([], [pid]), 60, "the new worker")
    found = samples(server)
    assert value(found, "inferd_model_ready", model="echo") == 1
    assert value(found, "inferd_worker_cpu_seconds_total", model="echo", worker="cpu:0/0") >= cpu_before


def test_gpu_series_per_model_and_device_when_a_worker_reports_them(monkeypatch) -> None:
    """No GPU here: the worker's torch reading and NVML are the boundaries stood in for; what is
    checked is how inferd turns them into series (the real readings are checked on a GPU machine)."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from inferd import gpu
    from inferd.messages import GpuMemory
    from inferd.metrics import Metrics

    monkeypatch.setattr(gpu, "device_memory", lambda: [gpu.DeviceMemory("cuda:0", 3_000, 80_000)])
    handle = SimpleNamespace(spec=SimpleNamespace(model=SimpleNamespace(name="resnet")), name="cuda:0/1", pid=2**22 + 7, state="ready")  # no such process
    model = SimpleNamespace(
        workers=SimpleNamespace(handles={"cuda:0/1": handle}, ready_count=1, restarts_total=0),
        batcher=SimpleNamespace(queue_depth=0, inflight_requests=0),
    )
    metrics = Metrics((0.1, 1.0), 8)
    collector = metrics.watch(lambda: {"resnet": model})  # type: ignore[arg-type, return-value]
    text = generate_latest(metrics.registry).decode()
    assert "inferd_gpu_memory" not in text  # nothing reported yet: absent, not zero
    collector.record_gpu(handle, GpuMemory("cuda:0", 1_000, 2_000))  # type: ignore[arg-type]
    text = generate_latest(metrics.registry).decode()
    assert 'inferd_gpu_memory_allocated_bytes{device="cuda:0",model="resnet",worker="cuda:0/1"} 1000.0' in text
    assert 'inferd_gpu_memory_reserved_bytes{device="cuda:0",model="resnet",worker="cuda:0/1"} 2000.0' in text
    assert 'inferd_gpu_memory_used_bytes{device="cuda:0"} 3000.0' in text
    assert 'inferd_gpu_memory_total_bytes{device="cuda:0"} 80000.0' in text
