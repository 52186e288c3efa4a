"""A real Prometheus server for tests: scrape one target, then ask it questions in PromQL.

`PrometheusServer.start(target)` runs the `prometheus` binary (Debian's package) on a free loopback
port with a generated config that scrapes `target` every second into its own temporary storage,
and returns once the server answers and has scraped the target successfully. Every wait polls a
condition against a deadline; nothing sleeps for a fixed time. `stop()` sends SIGTERM, waits for a
clean exit and removes the storage. `start_with_config(text, files=...)` runs a config of the
caller's own instead (several jobs, file-based discovery, relabelling).

This module is test support, not a test: it is used by the dashboard and rule tests here and by
end-to-end tests that point it at a running `inferd serve`.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

POLL_INTERVAL_S = 0.05
# A free port can be taken by another process between our probe and Prometheus' bind.
START_ATTEMPTS = 3
LOG_TAIL_CHARS = 2000
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None

QueryResult = list[dict[str, Any]]


class PrometheusError(RuntimeError):
    """Prometheus did not start, did not scrape its target in time, or rejected a query."""


def prometheus_binary() -> str | None:
    """The path of the `prometheus` executable, or None where it is not installed."""
    return shutil.which("prometheus")


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: Linux sends it SIGTERM when the test process dies,
    so a crashed or killed test run never leaves a Prometheus behind. It makes one system call
    through a function resolved before the fork, and takes no lock another thread could hold."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape_config(target: str, metrics_path: str = "/metrics", interval_s: float = 1.0) -> str:
    """A Prometheus config (JSON is valid YAML) scraping one target under job "inferd"."""
    interval = f"{round(interval_s * 1000)}ms"  # Prometheus durations take no decimal point
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "inferd",
                "metrics_path": metrics_path,
                "scrape_timeout": interval,
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    return json.dumps(config, indent=2)


class QueryError(PrometheusError):
    """The HTTP API answered a query with status "error" (a PromQL parse or evaluation error)."""

    def __init__(self, promql: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error} (query: {promql})")
        self.promql = promql
        self.error_type = error_type
        self.error = error


class PrometheusServer:
    """One running Prometheus process; build it with `PrometheusServer.start(...)`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        target: str,
        *,
        metrics_path: str = "/metrics",
        timeout_s: float = 30.0,
        wait_for_target: bool = True,
    ) -> PrometheusServer:
        """Start Prometheus scraping `target` ("host:port") and wait until it is up.

        With `wait_for_target=False` it returns once the HTTP API answers, which is enough for
        checking that expressions parse.
        """
        return cls.start_with_config(
            scrape_config(target, metrics_path),
            timeout_s=timeout_s,
            wait_for_target=wait_for_target,
        )

    @classmethod
    def start_with_config(
        cls,
        config: str,
        *,
        files: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        wait_for_target: bool = True,
    ) -> PrometheusServer:
        """Start Prometheus with a config of your own; `files` (name -> text) are written beside
        it, where relative paths in the config (file_sd_configs, rule_files) find them. With
        `wait_for_target` it returns once every active target has been scraped successfully."""
        binary = prometheus_binary()
        if binary is None:
            raise PrometheusError(
                "the prometheus binary is not on PATH (apt-get install prometheus)"
            )
        deadline = time.monotonic() + timeout_s
        server = cls._start_listening(binary, config, dict(files or {}), deadline)
        if wait_for_target:
            try:
                server.wait_for_target_up(deadline - time.monotonic())
            except PrometheusError:
                server.stop()
                raise
        return server

    @classmethod
    def _start_listening(
        cls, binary: str, config: str, files: dict[str, str], deadline: float
    ) -> PrometheusServer:
        for attempt in range(1, START_ATTEMPTS + 1):
            server = cls._launch(binary, config, files)
            try:
                server._wait_until_ready(deadline)
                return server
            except PrometheusError:
                lost_port_race = "address already in use" in server.log_tail()
                server.stop()
                if not lost_port_race or attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    @classmethod
    def _launch(cls, binary: str, config: str, files: dict[str, str]) -> PrometheusServer:
        workdir = Path(tempfile.mkdtemp(prefix="inferd-prometheus-"))
        config_path = workdir / "prometheus.yml"
        config_path.write_text(config)
        for name, text in files.items():
            (workdir / name).write_text(text)
        port = free_port()
        command = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with open(workdir / "prometheus.log", "wb") as log:
            # Its own session, so a Ctrl-C in the terminal reaches pytest, which stops it in order.
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,  # noqa: PLW1509
            )
        return cls(process, port, workdir)

    def log_tail(self) -> str:
        try:
            return (self.workdir / "prometheus.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def _wait_until_ready(self, deadline: float) -> None:
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with status {self.process.returncode} before it was "
                    f"ready; its log ends:\n{self.log_tail()}"
                )
            if self._is_ready():
                return
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"prometheus on {self.url} not ready in time:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10.0) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            # The API answers bad queries with 400/422 and a JSON body that says why.
            body = json.load(error)
        return body

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, each with its "health" ("up", "down", "unknown")."""
        body = self._get("/api/v1/targets", {"state": "active"})
        active: list[dict[str, Any]] = body["data"]["activeTargets"]
        return active

    def wait_for_target_up(self, timeout_s: float = 30.0) -> None:
        """Wait until every target has been scraped successfully at least once."""
        self.wait_for(
            self.targets,
            lambda found: bool(found) and all(t["health"] == "up" for t in found),
            timeout_s,
        )

    def query(self, promql: str, at: float | None = None) -> QueryResult:
        """Evaluate an instant query; the API's "result" list, or QueryError when it is refused."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query", params)
        if body.get("status") != "success":
            raise QueryError(promql, str(body.get("errorType")), str(body.get("error")))
        result: QueryResult = body["data"]["result"]
        return result

    def query_until(
        self,
        promql: str,
        predicate: Callable[[QueryResult], bool] = bool,
        timeout_s: float = 30.0,
    ) -> QueryResult:
        """Query until `predicate(result)` holds (by default: until there is any result)."""
        return self.wait_for(lambda: self.query(promql), predicate, timeout_s, promql)

    def wait_for(
        self,
        probe: Callable[[], Any],
        predicate: Callable[[Any], bool],
        timeout_s: float,
        what: str = "scrape target up",
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if predicate(value):
                return value
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited while waiting for {what}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"timed out after {timeout_s:.1f} s waiting for {what}; last answer: {value!r}"
                )
            time.sleep(POLL_INTERVAL_S)

    def stop(self, timeout_s: float = 10.0) -> int:
        """Stop Prometheus (SIGTERM, then SIGKILL after `timeout_s`) and remove its storage."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode
