"""Servers under test as subprocesses, and where they and the load generator may run.

A server is started in its own session (so its children can be found and stopped with it), is
ready when its readiness URL answers 200 before a deadline, and is stopped with SIGTERM to its
main process, then the rest of its process group if anything outlives it.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the servers and the load generator get; None means not pinned."""

    total_cpus: int
    server_cpus: list[int] | None
    loadgen_cpus: list[int] | None

    def describe(self) -> str:
        if self.server_cpus is None:
            return (
                f"{self.total_cpus} CPUs; not pinned: servers and wrk share every CPU "
                "(too few cores to split them without starving one side)"
            )
        return (
            f"{self.total_cpus} CPUs; servers on {format_cpus(self.server_cpus)}, "
            f"wrk on {format_cpus(self.loadgen_cpus or [])} (taskset)"
        )


def format_cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def plan_cpus(mode: str) -> CpuPlan:
    """mode: auto (split when there are 4+ CPUs), split (always, if 2+), shared (never)."""
    cpus = sorted(os.sched_getaffinity(0))
    split = mode == "split" or (mode == "auto" and len(cpus) >= 4)
    if not split or len(cpus) < 2:
        return CpuPlan(total_cpus=len(cpus), server_cpus=None, loadgen_cpus=None)
    loadgen_count = max(1, len(cpus) // 4)
    return CpuPlan(
        total_cpus=len(cpus), server_cpus=cpus[:-loadgen_count], loadgen_cpus=cpus[-loadgen_count:]
    )


def pinned(argv: list[str], cpus: list[int] | None) -> list[str]:
    return ["taskset", "-c", format_cpus(cpus), *argv] if cpus else argv


def free_port() -> int:
    """A port that is free now and below the kernel's ephemeral range, so that other programs'
    port-0 binds and outgoing connections cannot take it before our server binds it."""
    low, _ = ephemeral_range()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class ServerProcess:
    """One server under test: start, wait until ready, stop. Usable as a context manager."""

    def __init__(
        self,
        argv: list[str],
        ready_url: str,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_deadline_s: float = 120.0,
        stop_deadline_s: float = 40.0,
    ) -> None:
        self.argv = argv
        self.ready_url = ready_url
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.ready_deadline_s = ready_deadline_s
        self.stop_deadline_s = stop_deadline_s
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> ServerProcess:  # noqa: PYI034 (Self needs 3.11)
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_deadline_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode} before it was "
                    f"ready: {' '.join(self.argv)}\n{self.log_tail()}"
                )
            if _answers_200(self.ready_url):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.ready_url} not 200 within {self.ready_deadline_s:.0f} s\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process is None or self.exit_code is not None:
            return
        self.resume()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_deadline_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_code = self.process.returncode
        self._stop_leftovers(self.process.pid)

    @staticmethod
    def _stop_leftovers(group_id: int) -> None:
        """Children of the server that outlived it (its own session, so its own process group)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group_id, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.killpg(group_id, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def pause(self) -> None:
        """Stop every process of the server (SIGSTOP to its group) so an idle server that polls
        (LitServe's workers do) takes no CPU from the one being measured."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False
