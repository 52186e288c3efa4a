"""The Prometheus test helper against a tiny prometheus_client exporter."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from .conftest import ServeRegistry, StartPrometheus
from .prometheus import PrometheusServer, QueryError
from .promtool import check_metrics


def tiny_registry() -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    Gauge("standin_temperature_celsius", "A fixed reading", registry=registry).set(21.5)
    hits = Counter("standin_hits", "Hits so far", ["route"], registry=registry)
    hits.labels("/a").inc(3)
    return registry, hits


def value_of(result: list[dict[str, Any]]) -> float:
    (sample,) = result
    _timestamp, value = sample["value"]
    return float(value)


def test_scrapes_target_and_follows_its_changes(
    start_prometheus: StartPrometheus, serve_registry: ServeRegistry
) -> None:
    registry, hits = tiny_registry()
    target = serve_registry(registry)
    prometheus = start_prometheus(target)

    assert [t["health"] for t in prometheus.targets()] == ["up"]
    up = prometheus.query_until('up{job="inferd"}')
    assert up[0]["metric"]["instance"] == target
    assert value_of(up) == 1.0
    assert value_of(prometheus.query_until("standin_temperature_celsius")) == 21.5
    assert value_of(prometheus.query_until('standin_hits_total{route="/a"}')) == 3.0

    hits.labels("/a").inc(4)
    result = prometheus.query_until(
        'standin_hits_total{route="/a"}', lambda found: bool(found) and value_of(found) == 7.0
    )
    assert value_of(result) == 7.0


def test_reports_bad_promql(
    start_prometheus: StartPrometheus, serve_registry: ServeRegistry
) -> None:
    registry, _hits = tiny_registry()
    prometheus = start_prometheus(serve_registry(registry), wait_for_target=False)

    with pytest.raises(QueryError) as raised:
        prometheus.query("sum(rate(standin_hits_total[1m])")
    assert raised.value.error_type == "bad_data"
    assert "parse error" in raised.value.error


def test_stop_ends_process_and_removes_storage(
    start_prometheus: StartPrometheus, serve_registry: ServeRegistry
) -> None:
    registry, _hits = tiny_registry()
    prometheus: PrometheusServer = start_prometheus(serve_registry(registry), wait_for_target=False)

    assert prometheus.stop() == 0
    assert not prometheus.workdir.exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1.0)


def test_check_metrics_accepts_clean_exposition(
    promtool: str, serve_registry: ServeRegistry
) -> None:
    registry, _hits = tiny_registry()
    target = serve_registry(registry)
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5.0) as response:
        text = response.read().decode()

    assert check_metrics(text) == []


def test_check_metrics_lists_each_problem(promtool: str) -> None:
    text = "# TYPE requests counter\nrequests 1\n# HELP latency_ms Latency\nlatency_ms 2\n"

    problems = check_metrics(text)

    assert any("requests" in p and '"_total" suffix' in p for p in problems)
    assert any("requests" in p and "no help text" in p for p in problems)
    assert any("latency_ms" in p for p in problems)


def test_check_metrics_reports_unparsable_text(promtool: str) -> None:
    problems = check_metrics("not a metric {{\n")

    assert len(problems) == 1
    assert "parsing error" in problems[0]
