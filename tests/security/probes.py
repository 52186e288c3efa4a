"""What the security tests measure and how they talk to the daemon: the main process's resident
memory, the worst /healthz latency while an attack runs, metric values, and raw HTTP/1.1 over
sockets (for requests a well-behaved client would never send)."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer

MIB = 1024 * 1024
REPORTED: list[tuple[str, dict[str, Any]]] = []


def report(name: str, figures: dict[str, Any]) -> None:
    REPORTED.append((name, figures))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Watch:
    """While open, a thread polls /healthz back to back and samples the main process's RSS."""

    def __init__(self, server: RunningServer) -> None:
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline_rss_bytes = rss_bytes(server.process.pid)
        self.peak_rss_bytes = self.baseline_rss_bytes
        self.worst_healthz_s = 0.0
        self.healthz_failures = 0
        self.polls = 0

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def rss_growth_bytes(self) -> int:
        return self.peak_rss_bytes - self.baseline_rss_bytes

    def _run(self) -> None:
        with httpx.Client(base_url=self._server.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst_healthz_s = max(self.worst_healthz_s, time.perf_counter() - started)
                self.healthz_failures += not ok
                self.polls += 1
                self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes(self._server.process.pid))

    def figures(self) -> dict[str, Any]:
        return {
            "main process RSS before (MiB)": round(self.baseline_rss_bytes / MIB, 1),
            "main process RSS peak growth (MiB)": round(self.rss_growth_bytes / MIB, 1),
            "worst /healthz latency (ms)": round(self.worst_healthz_s * 1000, 1),
            "/healthz polls (failed)": f"{self.polls} ({self.healthz_failures})",
        }


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """The value of one series in /metrics (0 when absent)."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def port(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port(server)), timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
    return sock


def head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def has_answer(sock: socket.socket) -> bool:
    """Whether the server has written to `sock` (an answer, or a close), without waiting."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP/1.1 answer read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the connection closed before an answer: {data[:200]!r}")
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def item_body(size_bytes: int) -> bytes:
    """A native handler request of exactly `size_bytes`: one string item."""
    prefix, suffix = b'{"inputs": ["', b'"]}'
    return prefix + b"x" * (size_bytes - len(prefix) - len(suffix)) + suffix


def send_in_pieces(sock: socket.socket, data: bytes, piece_bytes: int = MIB) -> None:
    view = memoryview(data)
    for start in range(0, len(view), piece_bytes):
        sock.sendall(view[start : start + piece_bytes])
