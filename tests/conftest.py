"""Shared fixtures: start a real `inferd serve` on a free loopback port and wait for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
HANDLERS = TESTS / "models" / "handlers.py"
EXAMPLE_MODELS = REPO / "models"


def example_config(*names: str) -> str:
    """configs/example.yaml's models (those named, or all), as a config text for `start_server`."""
    document = yaml.safe_load((REPO / "configs" / "example.yaml").read_text())
    models = [m for m in document["models"] if not names or m["name"] in names]
    for model in models:
        for key in ("path", "handler"):
            if key in model:
                model[key] = model[key].replace("../models/", f"{EXAMPLE_MODELS}/")
    return yaml.safe_dump({"models": models}, sort_keys=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    url: str
    config_path: Path
    log_path: Path
    headers: dict[str, str]

    def client(self, timeout_s: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, headers=self.headers)

    def post(self, path: str, json: object) -> httpx.Response:
        return httpx.post(self.url + path, json=json, timeout=30, headers=self.headers)

    def log(self) -> str:
        return self.log_path.read_text()

    def models(self) -> dict[str, dict]:
        return {m["name"]: m for m in self.get("/models").json()["models"]}

    def worker_pids(self, model: str) -> list[int]:
        return [w["pid"] for w in self.models()[model]["workers"] if w["state"] == "ready"]

    def is_ready(self) -> bool:
        try:
            return self.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"inferd exited with {self.process.returncode}:\n{self.log()}")
            return self.is_ready() and self.all_workers_ready()

        wait_until(ready, timeout_s, "inferd and all its workers to be ready")

    def all_workers_ready(self) -> bool:
        return all(w["state"] == "ready" for m in self.models().values() for w in m["workers"])

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_server(
    tmp_path: Path, config_text: str, wait: bool = True, env: dict[str, str] | None = None, api_key: str | None = None
) -> RunningServer:
    port = free_port()
    config = textwrap.dedent(config_text).replace("{HANDLERS}", str(HANDLERS)).replace("{MODELS}", str(EXAMPLE_MODELS))
    if "server:" not in config:
        config = f"server: {{host: 127.0.0.1, port: {port}, drain_timeout_s: 10}}\n" + config
    config_path = tmp_path / f"inferd-{port}.yaml"
    config_path.write_text(config)
    log_path = tmp_path / f"inferd-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "inferd", "serve", str(config_path), "--port", str(port)],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    server = RunningServer(process, f"http://127.0.0.1:{port}", config_path, log_path, headers)
    if wait:
        server.wait_ready()
    return server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start inferd with a YAML text; every server started is stopped at the end of the test."""
    started: list[RunningServer] = []

    def start(config_text: str, wait: bool = True, env: dict[str, str] | None = None, api_key: str | None = None) -> RunningServer:
        server = start_server(tmp_path, config_text, wait, env, api_key)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


@pytest.fixture(scope="session")
def example_models() -> Path:
    """The example model files, built once if missing."""
    wanted = ("tiny.pt", "classifier.pt2", "efficientnet_lite0.pt")
    if not all((EXAMPLE_MODELS / name).exists() for name in wanted):
        subprocess.run([sys.executable, str(EXAMPLE_MODELS / "build_examples.py")], check=True)
    return EXAMPLE_MODELS
