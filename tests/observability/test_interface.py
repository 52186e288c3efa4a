"""The stand-in for inferd's metrics exports the whole interface, and promtool finds it clean."""

from __future__ import annotations

from prometheus_client import generate_latest

from .interface import GPU_METRIC_NAMES, METRIC_NAMES, exported_families, standin_registry
from .promtool import check_metrics


def standin_exposition() -> str:
    return generate_latest(standin_registry()).decode()


def test_standin_exports_every_family_of_the_interface() -> None:
    assert exported_families(standin_exposition()) == METRIC_NAMES
    assert GPU_METRIC_NAMES < METRIC_NAMES


def test_interface_names_pass_promtool_lint(promtool: str) -> None:
    assert check_metrics(standin_exposition()) == []
