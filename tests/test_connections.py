"""The connection layer against a real `inferd serve`, driven by raw sockets over loopback: slow,
idle, oversized and malformed clients, the connection cap and its gauge, and ports bound first."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferd.errors import EXIT_LISTEN
from tests.conftest import HANDLERS, RunningServer, free_port, wait_until

MODELS = f"""
models:
  - {{name: echo, handler: "{HANDLERS}:Echo"}}
"""


def limited_server(serve, **server: object) -> tuple[RunningServer, str]:
    """A server with the given `server:` settings and a separate metrics port (so that reading the
    gauges neither counts against nor is refused by the API port's limits); returns it and the
    metrics URL."""
    metrics_port = free_port()
    settings = {"host": "127.0.0.1", "port": 1, "metrics_port": metrics_port, "drain_timeout_s": 5, **server}
    text = "server: {" + ", ".join(f"{key}: {value}" for key, value in settings.items()) + "}\n" + MODELS
    return serve(text), f"http://127.0.0.1:{metrics_port}/metrics"


def metric(metrics_url: str, name: str, **labels: str) -> float:
    return metric_in(httpx.get(metrics_url, timeout=30).text, name, **labels)


def metric_in(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def connect(server: RunningServer) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a close)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, leaving the connection open."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def trickle_until_answered(sock: socket.socket, deadline_s: float) -> int:
    """Send one more header byte whenever the server has said nothing for 0.1 s, until it answers or
    closes; returns how many bytes were trickled."""
    sock.settimeout(0.1)
    sent, deadline = 0, time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            sock.recv(1, socket.MSG_PEEK)  # data or a close: the server has acted
            break
        except TimeoutError:
            sock.sendall(b"X")
            sent += 1
    sock.settimeout(30)
    return sent


def test_a_client_trickling_its_headers_gets_408_and_is_closed(serve) -> None:
    server, metrics_url = limited_server(serve, header_timeout_s=1)
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        trickled = trickle_until_answered(sock, deadline_s=60)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"server.header_timeout_s" in answer
    assert trickled > 0  # it was still sending when cut off: the deadline counts from the first byte
    assert metric(metrics_url, "inferd_connections_closed_total", listener="api", reason="header_timeout") == 1
    assert server.get("/healthz").status_code == 200


def test_idle_connections_are_closed_quietly(serve) -> None:
    server, metrics_url = limited_server(serve, header_timeout_s=1, keepalive_timeout_s=1)
    with connect(server) as between_requests, connect(server) as never_sent:
        between_requests.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(between_requests).startswith(b"HTTP/1.1 200 ")
        assert read_until_closed(between_requests) == b""  # keepalive_timeout_s, then a quiet close
        assert read_until_closed(never_sent) == b""  # header_timeout_s from the connection's opening
    wait_until(lambda: metric(metrics_url, "inferd_connections", listener="api") == 0, 30, "both to be closed")
    assert metric(metrics_url, "inferd_connections_closed_total", listener="api", reason="idle") == 2


def test_connections_past_max_connections_get_503_at_once_and_the_gauge_counts_them(serve) -> None:
    server, metrics_url = limited_server(serve, max_connections=4, header_timeout_s=300, keepalive_timeout_s=300)
    wait_until(lambda: metric(metrics_url, "inferd_connections", listener="api") == 0, 30, "start-up probes to close")
    held = [connect(server) for _ in range(4)]
    try:
        wait_until(lambda: metric(metrics_url, "inferd_connections", listener="api") == 4, 30, "4 open connections")
        with connect(server) as refused:
            answer = read_until_closed(refused)  # without sending anything: it is refused at once
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in answer and b"4 connections are open (server.max_connections)" in answer
        assert metric(metrics_url, "inferd_connections_closed_total", listener="api", reason="over_limit") == 1

        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the held ones are served as usual
        assert read_response(held[0]).startswith(b"HTTP/1.1 200 ")
        for sock in held[:2]:
            sock.close()
        wait_until(lambda: metric(metrics_url, "inferd_connections", listener="api") == 2, 30, "2 open connections")
        assert server.get("/healthz").status_code == 200
    finally:
        for sock in held:
            sock.close()
    assert "refusing new ones with 503" in server.log()


def rss_bytes(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_header_stream_past_max_header_bytes_gets_431_and_holds_no_memory(serve) -> None:
    server, metrics_url = limited_server(serve, max_header_bytes=65536, header_timeout_s=300)  # the cap alone
    assert server.get("/healthz").status_code == 200
    rss_before = rss_bytes(server.process.pid)
    chunk, sent, limit = b"a" * 65536, 0, 64 * 1024 * 1024
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")  # one header value that never ends
        try:
            while sent < limit:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed: what it should do
        answer = read_until_closed(sock)
    rss_growth = rss_bytes(server.process.pid) - rss_before
    assert sent < limit, "the server read 64 MiB of one request's headers"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
    assert rss_growth < 8 * 1024 * 1024, f"the main process grew by {rss_growth} bytes"
    assert metric(metrics_url, "inferd_connections_closed_total", listener="api", reason="header_too_large") == 1

    with connect(server) as sock:  # a client sending its oversized head at once reads the 431
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 100_000 + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"server.max_header_bytes" in answer, answer
    assert server.get("/healthz").status_code == 200


MALFORMED = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "header without a colon": b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
    "bytes past ASCII in the path": b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in a header value": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "Content-Length not a number": b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "Content-Length past 2**64": b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "two Content-Lengths": b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
    "Content-Length and chunked": b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "unknown HTTP version": b"GET /healthz HTTP/9.7\r\nHost: x\r\n\r\n",
    "a TLS ClientHello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
    "an HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "an Upgrade to WebSocket": b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
}


def test_malformed_requests_get_a_4xx_or_a_close_and_no_traceback(serve) -> None:
    server, metrics_url = limited_server(serve)
    framing_errors = 0
    for name, raw in MALFORMED.items():
        with connect(server) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = read_until_closed(sock)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), (name, answer[:200])
        framing_errors += b'{"error": "malformed HTTP request' in answer
    assert framing_errors >= len(MALFORMED) // 2  # most are refused by the parser itself, as JSON
    assert server.get("/healthz").status_code == 200
    closed = metric(metrics_url, "inferd_connections_closed_total", listener="api", reason="malformed")
    assert closed == framing_errors
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "WebSocket" not in log  # no advice about WebSocket libraries for a server that has none


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port some other process is listening on."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield other.getsockname()[1]


@pytest.mark.parametrize("key", ["port", "metrics_port"])
def test_a_port_in_use_stops_serve_at_once_and_starts_no_worker(tmp_path: Path, held_port: int, key: str) -> None:
    ports = {"port": free_port(), "metrics_port": free_port(), key: held_port}
    config = tmp_path / "inferd.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {ports['port']}, metrics_port: {ports['metrics_port']}}}\n{MODELS}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "inferd", "serve", str(config)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_LISTEN, output
    errors = [line for line in output.splitlines() if "cannot listen" in line]
    assert errors == [f"inferd: cannot listen on 127.0.0.1:{held_port} (server.{key}): port {held_port} is already "
                      "in use; stop the process that holds it or choose another port"], output  # fmt: skip
    assert "started worker" not in output and "Traceback" not in output, output


def test_the_open_files_limit_is_raised_to_the_hard_limit(serve) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 512)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))  # the server inherits a low soft limit
    try:
        server = serve(MODELS)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert line.split()[3:5] == [expected, expected], line
    if hard != resource.RLIM_INFINITY and lower < hard:
        assert f"open-files limit raised from {lower} to {hard}" in server.log()


def test_the_connection_gauge_reads_on_the_main_port_too(serve) -> None:
    server = serve(MODELS)
    with httpx.Client(base_url=server.url, timeout=30) as client:  # one kept-alive connection: this one

        def gauge() -> float:
            return metric_in(client.get("/metrics").text, "inferd_connections", listener="api")

        wait_until(lambda: gauge() == 1, 30, "the start-up probes' connections to close")
        probe = connect(server)
        wait_until(lambda: gauge() == 2, 30, "a second connection to be counted")
        probe.close()
        wait_until(lambda: gauge() == 1, 30, "the second connection to be let go")
