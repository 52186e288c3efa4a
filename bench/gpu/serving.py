"""One `inferd serve` under test: its config written from model entries, started on a loopback port,
and read through its HTTP routes (/models, /metrics) and its processes (the forkserver)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import procs
import psutil
from prometheus_client.parser import text_string_to_metric_families

from gpu.bootstrap import REPO_ROOT

HANDLERS = Path(__file__).resolve().parent / "handlers.py"


def handler(name: str) -> str:
    return f"{HANDLERS}:{name}"


class InferdServer:
    def __init__(self, name: str, scratch: Path, models: list[dict[str, Any]], ready_deadline_s: float = 150.0) -> None:
        self.name = name
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = scratch / f"{name}.yaml"
        server = {"host": "127.0.0.1", "port": self.port, "log_level": "info", "drain_timeout_s": 5}
        self.config_path.write_text(json.dumps({"server": server, "models": models}, indent=2) + "\n")
        self.process = procs.ServerProcess(
            [sys.executable, "-m", "inferd", "serve", str(self.config_path)],
            self.url + "/readyz",
            scratch / f"{name}.log",
            cwd=REPO_ROOT,
            ready_deadline_s=ready_deadline_s,
            stop_deadline_s=20,
        )
        self.started_at = 0.0
        self.ready_at = 0.0
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> InferdServer:
        """Start and wait until every worker is ready; raises RuntimeError (with the log's tail)."""
        self.started_at = time.monotonic()
        self.process.start()
        wait_until(self.all_workers_ready, 120, f"{self.name}: every worker ready")
        self.ready_at = time.monotonic()
        return self

    def launch(self) -> InferdServer:
        """Start without waiting for readiness (a check that expects a model to fail uses this)."""
        self.started_at = time.monotonic()
        with open(self.process.log_path, "wb") as log:
            self.process.process = subprocess.Popen(
                self.process.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
            )
        return self

    def exit_code(self) -> int | None:
        return None if self.process.process is None else self.process.process.poll()

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def serving_s(self) -> float:
        """Time since every worker was first ready."""
        return time.monotonic() - self.ready_at if self.ready_at else 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def stop(self) -> None:
        self.client.close()
        self.process.stop()

    def log(self) -> str:
        return self.process.log_tail(400)

    def models(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in self.client.get("/models").json()["models"]}

    def all_workers_ready(self) -> bool:
        if not self.running():
            raise RuntimeError(f"{self.name} exited:\n{self.process.log_tail()}")
        try:
            return all(w["state"] == "ready" for m in self.models().values() for w in m["workers"])
        except httpx.HTTPError:
            return False

    def worker_pids(self, model: str) -> dict[str, int]:
        """Ready workers by slot name."""
        return {w["slot"]: w["pid"] for w in self.models()[model]["workers"] if w["state"] == "ready"}

    def predict(self, model: str, inputs: Any) -> httpx.Response:
        return self.client.post(f"/models/{model}/predict", json={"inputs": inputs})

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every sample of /metrics by sample name: [(labels, value), ...]."""
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return samples

    def forkserver_pid(self) -> int | None:
        """The process workers are forked from: a child of the server whose command names it."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return None
        for child in children:
            try:
                if "forkserver" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                continue
        return None

    def cpu_percent_during(self, seconds: float) -> float:
        """The main process's CPU use over `seconds` (100 = one core)."""
        process = psutil.Process(self.pid)
        process.cpu_percent(None)
        time.sleep(seconds)
        return float(process.cpu_percent(None))


def sample(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    for have, value in metrics.get(name, []):
        if all(have.get(key) == wanted for key, wanted in labels.items()):
            return value
    return None


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
