"""The servers under test: how each is started, and the endpoints the load is sent to.

A `ServerSpec` says how to start one server process; an `Endpoint` is one (target, model) pair that
is measured, with its URL, body and the spec of the server it lives on (inferd native and v2 share
one inferd). The schedules in run_all.py only ever see these two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import benchmodels
import inferd_target
import procs

BENCH_DIR = Path(__file__).resolve().parent
LITSERVE_ENV = "INFERD_BENCH_LITSERVE_PYTHON"

# LitServe settings tried; the ratios use the best at the top concurrency.
LITSERVE_VARIANTS: dict[str, list[str]] = {
    "w2": ["--workers", "2"],  # LitServe's default: one API server per worker
    "w2-api1": ["--workers", "2", "--api-servers", "1"],
    "w1-api1": ["--workers", "1", "--api-servers", "1"],
    "w2-zmq": ["--workers", "2", "--fast-queue"],  # ZeroMQ queues between API servers and workers
}


@dataclass(frozen=True)
class ServerSpec:
    key: str  # unique per server process, also its log file's name
    argv: list[str]
    ready_path: str
    port: int
    env: dict[str, str] | None = None
    cwd: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def process(self, scratch: Path) -> procs.ServerProcess:
        return procs.ServerProcess(
            self.argv,
            self.base_url + self.ready_path,
            scratch / f"{self.key}.log",
            env=self.env,
            cwd=self.cwd,
        )


@dataclass(frozen=True)
class Endpoint:
    target: str
    model: str
    server: ServerSpec
    path: str
    body: bytes
    note: str

    @property
    def url(self) -> str:
        return self.server.base_url + self.path


@dataclass(frozen=True)
class Placement:
    server_cpus: list[int] | None  # taskset for every server process
    inferd_cpus: list[int] | None  # cpu_affinity in inferd's config


def native_body(model: str) -> bytes:
    return json.dumps({"inputs": [benchmodels.sample_row(model)]}).encode()


def v2_body(model: str) -> bytes:
    row = benchmodels.sample_row(model)
    tensor = {"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}
    return json.dumps({"inputs": [tensor]}).encode()


def uvicorn_stack(python: str) -> str:
    """Which event loop and HTTP parser uvicorn picks in that python ("auto" takes the fast ones)."""
    probe = (
        "import importlib.util as u; print('uvloop' if u.find_spec('uvloop') else 'asyncio', "
        "'httptools' if u.find_spec('httptools') else 'h11', sep='+')"
    )
    found = subprocess.run([python, "-c", probe], check=False, capture_output=True, text=True)
    return f"uvicorn {found.stdout.strip() or '?'}"


def _server_argv(python: str, script: str, model: str, model_path: Path, port: int) -> list[str]:
    """The command line every in-tree comparison server takes (bare, LitServe)."""
    return [python, str(BENCH_DIR / script), "--model-path", str(model_path), "--name", model, "--port", str(port)]


def bare(
    model: str,
    model_path: Path,
    where: Placement,
    python: str = sys.executable,
    target: str = "bare",
) -> Endpoint:
    port = procs.free_port()
    argv = _server_argv(python, "bare_server.py", model, model_path, port)
    spec = ServerSpec(
        f"{target.replace(' ', '-').strip('()')}-{model}",
        procs.pinned(argv, where.server_cpus),
        "/readyz",
        port,
    )
    return Endpoint(
        target, model, spec, f"/models/{model}/predict", native_body(model), uvicorn_stack(python)
    )


def litserve_python(option: str | None) -> tuple[str | None, str]:
    """The python of LitServe's own venv, or None and why it is skipped."""
    python = option or os.environ.get(LITSERVE_ENV)
    if not python:
        return None, f"no LitServe python given (--litserve-python or ${LITSERVE_ENV})"
    check = subprocess.run(
        [python, "-c", "import litserve, torch"], check=False, capture_output=True, text=True
    )
    if check.returncode != 0:
        return None, f"{python} cannot import litserve and torch: {check.stderr.strip()[-200:]}"
    return python, ""


def litserve(
    model: str,
    model_path: Path,
    where: Placement,
    python: str,
    variant: str,
    batch_size: int,
    timeout_ms: float,
) -> Endpoint:
    port = procs.free_port()
    argv = [
        *_server_argv(python, "litserve_server.py", model, model_path, port),
        "--max-batch-size",
        str(batch_size),
        "--batch-timeout-ms",
        str(timeout_ms),
        *LITSERVE_VARIANTS[variant],
    ]
    spec = ServerSpec(
        f"litserve-{variant}-{model}", procs.pinned(argv, where.server_cpus), "/health", port
    )
    return Endpoint(
        f"litserve {variant}",
        model,
        spec,
        f"/models/{model}/predict",
        native_body(model),
        f"batch {batch_size}, {timeout_ms:g} ms",
    )


def inferd(
    model: str,
    model_path: Path,
    where: Placement,
    command: list[str],
    protocols: list[str],
    batch_size: int,
    timeout_ms: float | None,
    workers: int,
    batch_wait: str = "adaptive",
    label: str = "",
    busy_poll_us: float | None = None,
) -> list[Endpoint]:
    """One inferd serving `model`, measured through each protocol in `protocols` (native, v2).
    `label` tells several inferds of one model apart (in the row's target and the server's key);
    `busy_poll_us` None leaves inferd's default."""
    port = procs.free_port()
    config = inferd_target.write_config(
        model,
        model_path,
        port,
        max_batch_size=batch_size,
        batch_timeout_ms=timeout_ms,
        workers=workers,
        cpus=where.inferd_cpus or where.server_cpus,
        batch_wait=batch_wait,
        label=label.replace(" ", "-"),
        busy_poll_us=busy_poll_us,
    )
    spec = ServerSpec(
        f"inferd-{model}{label.replace(' ', '-')}",
        procs.pinned([*command, "serve", str(config)], where.server_cpus),
        "/readyz",
        port,
        env=inferd_target.environment(),
        cwd=inferd_target.REPO_ROOT,
    )
    timeout = "no timeout" if timeout_ms is None else f"{batch_wait} {timeout_ms:g} ms"
    note = f"batch {batch_size}, {timeout}, {workers} worker(s)"
    if where.inferd_cpus:
        note += f", CPUs {procs.format_cpus(where.inferd_cpus)}"
    routes = {
        "native": (f"/models/{model}/predict", native_body(model)),
        "v2": (f"/v2/models/{model}/infer", v2_body(model)),
    }
    return [Endpoint(f"inferd {name}{label}", model, spec, *routes[name], note) for name in protocols]
