"""The Grafana dashboard deploy/grafana/inferd.json: a well-formed Grafana 10 dashboard whose every
query is PromQL that a real Prometheus accepts and answers with data from inferd's metric
interface (template variables replaced by the values Grafana would put in)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import start_http_server

from .conftest import skip_without
from .interface import METRIC_NAMES, family_of, standin_registry
from .prometheus import PrometheusServer, QueryError, prometheus_binary

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "inferd.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
GRID_COLUMNS = 24
PANEL_TYPES = {"row", "timeseries", "stat", "heatmap"}
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
METRIC_NAME = re.compile(r"\binferd_[a-z_]+\b")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
MODELS = ("tiny", "minilm")  # the stand-in's models
# What Grafana substitutes: a multi-value variable set to All becomes a regex alternation (or its
# allValue), and the built-in intervals become durations.
VALUES = {
    "model": "|".join(MODELS),
    "instance": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
DATA_TIMEOUT_S = 30.0


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VALUES:
            raise AssertionError(f"no test value for variable ${name} in {expr!r}")
        return VALUES[name]

    return VARIABLE.sub(value, expr)


def test_is_a_grafana_10_dashboard() -> None:
    dashboard = load_dashboard()

    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None  # Grafana assigns ids; a fixed one clashes on import
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert {panel["type"] for panel in panels(dashboard)} <= PANEL_TYPES


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= GRID_COLUMNS, panel[
            "title"
        ]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_query_uses_the_templated_datasource() -> None:
    dashboard = load_dashboard()
    assert variables(dashboard)["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables(dashboard)["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_model_variable_lists_the_models_that_served_requests() -> None:
    model = variables(load_dashboard())["model"]

    assert model["definition"] == "label_values(inferd_requests_total, model)"
    assert model["query"]["query"] == model["definition"]
    assert model["datasource"] == DATASOURCE
    assert model["multi"] and model["includeAll"]


def test_queries_use_declared_variables_only() -> None:
    dashboard = load_dashboard()
    declared = set(variables(dashboard))
    for title, expr in queries(dashboard):
        used = {a or b for a, b in VARIABLE.findall(expr)}
        assert {name for name in used if not name.startswith("__")} <= declared, title


def test_queries_cover_exactly_the_metric_interface() -> None:
    dashboard = load_dashboard()
    used = {
        family_of(name) for _title, expr in queries(dashboard) for name in METRIC_NAME.findall(expr)
    }
    for variable in variables(dashboard).values():
        used |= {family_of(name) for name in METRIC_NAME.findall(variable.get("definition", ""))}

    assert used - METRIC_NAMES == set(), "the dashboard uses series inferd does not export"
    assert METRIC_NAMES - used == set(), "the dashboard leaves out part of inferd's metrics"


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    """A Prometheus scraping a stand-in that exports every series of inferd's interface, once it
    holds the two scrapes that rate() needs. Shared by this module's tests: it takes seconds."""
    if prometheus_binary() is None:
        skip_without("prometheus")
    exporter, _thread = start_http_server(0, addr="127.0.0.1", registry=standin_registry())
    try:
        server = PrometheusServer.start(f"127.0.0.1:{exporter.server_port}")
        try:
            server.query_until("count_over_time(up[1m]) >= 2", timeout_s=DATA_TIMEOUT_S)
            yield server
        finally:
            server.stop()
    finally:
        exporter.shutdown()
        exporter.server_close()


def test_every_query_parses_and_returns_data(prometheus: PrometheusServer) -> None:
    failures = []
    for title, expr in queries(load_dashboard()):
        promql = substitute(expr)
        try:
            if not prometheus.query(promql):
                failures.append(f"{title}: no data from {promql}")
        except QueryError as error:
            failures.append(f"{title}: {error}")
    assert failures == []


def test_query_variables_find_the_stand_in_values(prometheus: PrometheusServer) -> None:
    expected = {"model": set(MODELS), "instance": {prometheus.targets()[0]["labels"]["instance"]}}
    for name, variable in variables(load_dashboard()).items():
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable["definition"])
        assert match, f"${name}: expected label_values(SERIES, LABEL)"
        series, label = match.groups()
        result = prometheus.query_until(f"group by ({label}) ({substitute(series)})")
        assert {sample["metric"][label] for sample in result} == expected[name]
