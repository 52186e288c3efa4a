"""Slow and hostile clients beside a well-behaved one: what they cost it, and the main process.

    python bench/slow_clients.py [--connections 800] [--duration 6] [--header-timeout 10] [--stream-mib 200]
                                 [--rounds 1]

Starts inferd with the example `tiny` model (models/tiny.pt; build it with models/build_examples.py)
and prints:
1. a well-behaved client's latency (sequential one-row predicts on one kept-alive connection, for
   `--duration` s): p50/p99 alone, then beside `--connections` connections that trickle their
   headers one byte every `--trickle-every` s, with the main process's RSS and the open-connections
   gauge; then how many trickling connections the server closed (408 or close) once
   `server.header_timeout_s` passed, and when the last one went. `--rounds` repeats this and prints
   the median p99 ratio (on a shared machine one round can drift by 2x either way).
2. one connection streaming `--stream-mib` MiB of headers that never end (one endless header value,
   then many header lines) while /healthz is probed every 10 ms: the worst /healthz latency, how many
   bytes the client got out before the server cut the stream off, and the main process's RSS; first
   the same probe with nothing else running, for the machine's own noise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inferd_target import environment
from procs import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
ROW = {"inputs": [[float(n) for n in range(16)]]}


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MiB: resident now, and the peak since it started."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def percentile_ms(latencies_s: list[float], q: float) -> float:
    ordered = sorted(latencies_s)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def well_behaved(base: str, duration_s: float) -> list[float]:
    latencies = []
    with httpx.Client(base_url=base, timeout=60) as client:
        client.post("/models/tiny/predict", json=ROW)  # open the connection first
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            started = time.perf_counter()
            answer = client.post("/models/tiny/predict", json=ROW)
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise SystemExit(f"the well-behaved client got {answer.status_code}: {answer.text[:200]}")
    return latencies


def gauge(base: str) -> str:
    for line in httpx.get(f"{base}/metrics", timeout=60).text.splitlines():
        if line.startswith('inferd_connections{listener="api"}'):
            return line.split()[-1]
    return "?"


@dataclass
class TrickleOutcome:
    closed: int = 0
    answered_408: int = 0
    last_closed_s: float = 0.0


def trickle(
    port: int, count: int, every_s: float, opened: multiprocessing.Event, results: multiprocessing.Queue
) -> None:
    """In a process of its own (so it takes no GIL time from the measured client): `count`
    connections that send a request's head one byte every `every_s`, never finishing it, until the
    server has closed every one; puts a TrickleOutcome on `results`."""
    selector = selectors.DefaultSelector()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /models/tiny/predict HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    started = next_byte = time.monotonic()
    opened.set()
    outcome = TrickleOutcome()
    while selector.get_map():
        for key, _ in selector.select(timeout=max(0.0, next_byte - time.monotonic())):
            sock = key.fileobj
            try:
                data = sock.recv(65536)  # type: ignore[union-attr]
            except OSError:
                data = b""
            outcome.answered_408 += data.startswith(b"HTTP/1.1 408")
            if not data or data.startswith(b"HTTP/1.1 408"):
                selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                outcome.closed += 1
                outcome.last_closed_s = time.monotonic() - started
        if time.monotonic() >= next_byte:
            for key in list(selector.get_map().values()):
                try:
                    key.fileobj.send(b"X")  # type: ignore[union-attr]
                except OSError:
                    pass  # closed by the server: the selector reports it
            next_byte += every_s
    results.put(outcome)


def phase_tricklers(base: str, port: int, pid: int, args: argparse.Namespace) -> float:
    """One round: the client alone, then beside the tricklers; returns the p99 ratio."""
    alone = well_behaved(base, args.duration)
    print(f"well-behaved client alone:        p50 {percentile_ms(alone, 0.5):7.2f} ms  p99 "
          f"{percentile_ms(alone, 0.99):7.2f} ms  ({len(alone)} requests)  main RSS {rss_mib(pid)[0]:.0f} MiB")  # fmt: skip
    opened, results = multiprocessing.Event(), multiprocessing.Queue()
    trickler = multiprocessing.Process(
        target=trickle, args=(port, args.connections, args.trickle_every, opened, results)
    )
    trickler.start()
    opened.wait(60)
    open_now = gauge(base)
    beside = well_behaved(base, args.duration)
    ratio = percentile_ms(beside, 0.99) / percentile_ms(alone, 0.99)
    print(f"beside {args.connections} trickling connections: p50 {percentile_ms(beside, 0.5):7.2f} ms  p99 "
          f"{percentile_ms(beside, 0.99):7.2f} ms  ({len(beside)} requests)  main RSS {rss_mib(pid)[0]:.0f} MiB  "
          f"open connections {open_now}  p99 ratio {ratio:.2f}x")  # fmt: skip
    outcome: TrickleOutcome = results.get(timeout=args.header_timeout + 60)
    trickler.join()
    print(f"trickling connections closed by the server: {outcome.closed}/{args.connections} "
          f"({outcome.answered_408} with 408), the last {outcome.last_closed_s:.1f} s after they began "
          f"(server.header_timeout_s {args.header_timeout:g}); open connections now {gauge(base)}")  # fmt: skip
    return ratio


def stream_headers(port: int, total_bytes: int, lines: bool) -> int:
    """Send a head that never ends, as fast as the server reads it; the bytes it took before closing."""
    chunk = b"X-Filler: " + b"f" * 65524 + b"\r\n" if lines else b"v" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + (b"" if lines else b"X-Endless: "))
        try:
            while sent < total_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
    return sent


def probe_healthz(base: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/healthz")
            latencies.append(time.perf_counter() - started)
            stop.wait(0.01)


def probed(base: str, during: Callable[[], str]) -> tuple[list[float], str]:
    """/healthz latencies while `during` runs and for a second after it; and what it returned."""
    stop, latencies = threading.Event(), []
    prober = threading.Thread(target=probe_healthz, args=(base, stop, latencies))
    prober.start()
    said = during()
    stop.wait(1.0)
    stop.set()
    prober.join()
    return latencies, said


def phase_stream(base: str, port: int, pid: int, args: argparse.Namespace) -> None:
    def nothing() -> str:
        time.sleep(0.5)
        return "nothing else"

    def stream(lines: bool) -> Callable[[], str]:
        def run() -> str:
            started = time.monotonic()
            sent = stream_headers(port, int(args.stream_mib * 2**20), lines)
            shape = "many header lines" if lines else "one endless header value"
            return (f"{args.stream_mib:g} MiB of headers ({shape}): the client got {sent / 2**20:.2f} MiB out "
                    f"in {time.monotonic() - started:.2f} s before the server closed")  # fmt: skip

        return run

    for during in (nothing, stream(False), stream(True)):
        before = rss_mib(pid)[0]
        latencies, said = probed(base, during)
        after, peak = rss_mib(pid)
        print(f"{said}; /healthz worst {max(latencies) * 1000:.1f} ms, p99 {percentile_ms(latencies, 0.99):.1f} ms "
              f"over {len(latencies)} probes; main RSS {before:.0f} -> {after:.0f} MiB (peak {peak:.0f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=800)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per well-behaved run")
    parser.add_argument("--trickle-every", type=float, default=1.0, help="seconds between a trickler's bytes")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="server.header_timeout_s")
    parser.add_argument("--stream-mib", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=1, help="alone/beside rounds (a busy machine drifts)")
    args = parser.parse_args()
    if args.duration >= args.header_timeout:
        parser.error("--duration must be below --header-timeout, or the tricklers are gone before it ends")
    model = REPO / "models" / "tiny.pt"
    if not model.exists():
        raise SystemExit(f"{model} is missing: run models/build_examples.py first")
    folder = Path(tempfile.mkdtemp(prefix="inferd-slow-"))
    port = free_port()
    config = folder / "slow.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, log_level: warning, header_timeout_s: {args.header_timeout}}}\n"
        f"models:\n  - {{name: tiny, path: {model}, inputs: [{{name: input, shape: [-1, 16]}}]}}\n"
    )
    argv = [sys.executable, "-m", "inferd", "serve", str(config)]
    with ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / "inferd.log", env=environment()) as server:
        base = f"http://127.0.0.1:{port}"
        ratios = [phase_tricklers(base, port, server.pid, args) for _ in range(args.rounds)]
        if args.rounds > 1:
            print(f"p99 ratio over {args.rounds} rounds: median {statistics.median(ratios):.2f}x, "
                  f"range {min(ratios):.2f}x..{max(ratios):.2f}x")  # fmt: skip
        phase_stream(base, port, server.pid, args)
    print(f"server log: {folder / 'inferd.log'}")


if __name__ == "__main__":
    main()
