"""The example Prometheus config and alert rules in deploy/prometheus/: promtool accepts them,
the rules' unit tests pass, they use only inferd's metric interface, and the Kubernetes pod job's
relabelling turns pod annotations into the right scrape target."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Gauge

from .conftest import ServeRegistry, StartPrometheus
from .interface import METRIC_NAMES, family_of
from .promtool import run_promtool

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "inferd.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "rules" / "inferd.rules.test.yml"
POD_JOB = "inferd-pods"
# Debian builds Prometheus without some service discoveries, Kubernetes among them.
NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"
METRIC_NAME = re.compile(r"\binferd_[a-z_]+\b")


def load_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return config


def pod_job() -> dict[str, Any]:
    (job,) = [job for job in load_config()["scrape_configs"] if job["job_name"] == POD_JOB]
    return job


def test_rules_pass_promtool_check(promtool: str) -> None:
    run = run_promtool("check", "rules", RULES)
    assert run.returncode == 0, run.output


def test_rule_unit_tests_pass(promtool: str) -> None:
    run = run_promtool("test", "rules", RULE_TESTS)
    assert run.returncode == 0, run.output


def test_alerts_use_only_the_metric_interface() -> None:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    names = {family_of(name) for rule in rules for name in METRIC_NAME.findall(rule["expr"])}

    assert names <= METRIC_NAMES
    assert {rule["alert"] for rule in rules} >= {"InferdModelNotReady", "InferdHighP99Latency"}


def test_config_passes_promtool_check(promtool: str, tmp_path: Path) -> None:
    run = run_promtool("check", "config", CONFIG)
    if NO_KUBERNETES_SD in run.output:
        # Check everything else, relabelling included, with the discovery swapped for a static list.
        run = run_promtool("check", "config", config_without_kubernetes_sd(tmp_path))
        assert pod_job()["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert run.returncode == 0, run.output
    assert "rules found" in run.output  # the rule_files glob found the rules


def config_without_kubernetes_sd(directory: Path) -> Path:
    config = load_config()
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["10.0.0.1:8080"]}]
    shutil.copytree(PROMETHEUS_DIR / "rules", directory / "rules")
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def pod(name: str, address: str, phase: str, annotations: dict[str, str]) -> dict[str, Any]:
    """A file_sd target group carrying the labels Kubernetes pod discovery would give a pod."""
    labels = {
        "__meta_kubernetes_namespace": "serving",
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_node_name": "node-1",
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "inferd",
    }
    for key, value in annotations.items():
        labels[f"__meta_kubernetes_pod_annotation_prometheus_io_{key}"] = value
    return {"targets": [address], "labels": labels}


def test_pod_annotations_choose_the_scrape_target(
    start_prometheus_with_config: StartPrometheus, serve_registry: ServeRegistry
) -> None:
    registry = CollectorRegistry()
    Gauge("inferd_model_ready", "Ready", ["model"], registry=registry).labels("tiny").set(1)
    metrics_port = serve_registry(registry).rsplit(":", 1)[1]
    pods = [
        # The pod's address names its first container port; the annotation names the metrics port.
        pod(
            "inferd-0",
            "127.0.0.1:1",
            "Running",
            {"scrape": "true", "port": metrics_port, "path": "/inferd/metrics"},
        ),
        pod("inferd-1", "127.0.0.1:2", "Running", {}),
        pod("inferd-2", "127.0.0.1:3", "Pending", {"scrape": "true", "port": metrics_port}),
        pod("other-0", "127.0.0.1:4", "Running", {"scrape": "false"}),
    ]
    job = pod_job()
    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": ["pods.json"]}]
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}

    prometheus = start_prometheus_with_config(
        json.dumps(config), files={"pods.json": json.dumps(pods)}
    )

    (target,) = prometheus.targets()
    assert target["scrapeUrl"] == f"http://127.0.0.1:{metrics_port}/inferd/metrics"
    assert target["health"] == "up"
    assert {key: target["labels"][key] for key in ("namespace", "pod", "node")} == {
        "namespace": "serving",
        "pod": "inferd-0",
        "node": "node-1",
    }
    assert target["labels"]["app_kubernetes_io_name"] == "inferd"
    ready = prometheus.query_until('inferd_model_ready{job="inferd-pods", pod="inferd-0"}')
    assert ready[0]["value"][1] == "1"
