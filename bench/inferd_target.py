"""How the bench runs inferd: the command, its environment, and the config file it is given."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import benchmodels

REPO_ROOT = Path(__file__).resolve().parent.parent


def command(option: str | None) -> list[str]:
    """`inferd` as given, else this python with `-m inferd` (run from this checkout)."""
    return shlex.split(option) if option else [sys.executable, "-m", "inferd"]


def environment() -> dict[str, str]:
    """Run the inferd of this checkout, whatever the venv has installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def available(argv: list[str]) -> tuple[bool, str]:
    check = subprocess.run(
        [*argv, "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=environment(),
        cwd=REPO_ROOT,
    )
    said = (check.stdout + check.stderr).strip()
    if check.returncode != 0 or "serve" not in said:
        return False, f"`{' '.join(argv)} --help` failed: {said[-300:]}"
    return True, ""


def write_config(
    model: str,
    model_path: Path,
    port: int,
    *,
    max_batch_size: int,
    batch_timeout_ms: float | None,
    workers: int,
    cpus: list[int] | None,
    batch_wait: str = "adaptive",
    label: str = "",
    busy_poll_us: float | None = None,
) -> Path:
    """A one-model config beside the model file; JSON is YAML, so no pyyaml is needed here."""
    width = benchmodels.MODELS[model].in_features
    entry: dict[str, object] = {
        "name": model,
        "path": model_path.name,
        "device": "cpu",
        "workers_per_device": workers,
        "max_batch_size": max_batch_size,
        "batch_wait": batch_wait,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, width]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, width]}],
    }
    if batch_timeout_ms is not None:
        entry["batch_timeout_ms"] = batch_timeout_ms
    if busy_poll_us is not None:
        entry["busy_poll_us"] = busy_poll_us
    if cpus:
        entry["cpu_affinity"] = ",".join(map(str, cpus))
    config = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
        "models": [entry],
    }
    path = model_path.parent / f"inferd-{model}{label}.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
