"""A real Prometheus scrapes a running inferd; promtool finds its /metrics text clean."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .interface import EVENT_METRIC_NAMES, GPU_METRIC_NAMES, METRIC_NAMES, exported_families
from .promtool import check_metrics

CONFIG = """
server: {host: 127.0.0.1, port: 1, metrics_port: %d}
models:
  - name: echo
    handler: {HANDLERS}:Echo
    max_batch_size: 4
    batch_timeout_ms: 5
  - name: tiny
    path: {MODELS}/tiny.pt
    max_batch_size: 8
    inputs: [{name: input, shape: [-1, 16]}]
"""


def test_prometheus_computes_a_per_model_p99_from_inferd(serve, start_prometheus, promtool, example_models) -> None:
    from tests.conftest import free_port

    metrics_port = free_port()
    server = serve(CONFIG % metrics_port)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: server.post("/models/echo/predict", {"inputs": [n]}), range(40)))
        list(pool.map(lambda n: server.post("/models/tiny/predict", {"inputs": [[float(n)] * 16]}), range(40)))

    assert server.get("/metrics").status_code == 404  # served on the metrics port only
    prometheus = start_prometheus(f"127.0.0.1:{metrics_port}")
    p99 = prometheus.query_until(
        "histogram_quantile(0.99, sum by (le, model) (inferd_request_duration_seconds_bucket))",
        lambda result: {r["metric"]["model"] for r in result} == {"echo", "tiny"},
    )
    for series in p99:
        assert 0 < float(series["value"][1]) < 30
    total = prometheus.query('sum(inferd_requests_total{code="200"})')
    assert float(total[0]["value"][1]) == 80

    import httpx

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert check_metrics(text) == []
    assert exported_families(text) >= METRIC_NAMES - GPU_METRIC_NAMES - EVENT_METRIC_NAMES
    assert not exported_families(text) & GPU_METRIC_NAMES
