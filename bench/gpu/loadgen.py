"""Closed-loop HTTP/1.1 load from several processes: no wrk on the lent machine, and httpx is too
slow a client to load a server that answers tens of thousands of requests a second.

Each process runs `connections` keep-alive connections on one asyncio loop (uvloop if present);
each connection sends its next request as soon as the last answer arrived. Only requests started
after the warm-up are counted. A process prints one JSON line: counts by status, errors, latencies.

    python3 bench/gpu/loadgen.py --url URL --body-file F [--header K:V] --connections 64 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # connection errors and malformed answers
    latencies_s: list[float] = field(default_factory=list)


def _request_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    head = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        f"Content-Length: {len(body)}",
    ]
    head += [f"{name}: {value}" for name, value in {"Content-Type": "application/json", **headers}.items()]
    return str(parts.hostname), int(parts.port or 80), ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_answer(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ConnectionError("answer without Content-Length")
    await reader.readexactly(length)
    return status


async def _connection(host: str, port: int, request: bytes, count_from: float, stop_at: float, tally: Tally) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            assert reader is not None
            status = await _read_answer(reader)
        except (OSError, ConnectionError, ValueError, IndexError, asyncio.IncompleteReadError):
            if started >= count_from:
                tally.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)  # a refused connection must not spin
            continue
        if started >= count_from:
            tally.statuses[status] += 1
            tally.latencies_s.append(time.perf_counter() - started)
    if writer is not None:
        writer.close()


async def _drive(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float, warmup_s: float
) -> Tally:
    host, port, request = _request_bytes(url, body, headers)
    tally = Tally()
    count_from = time.perf_counter() + warmup_s
    stop_at = count_from + seconds
    await asyncio.gather(*(_connection(host, port, request, count_from, stop_at, tally) for _ in range(connections)))
    return tally


def _percentile_ms(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return 1000 * values[0] if values else 0.0
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


@dataclass(frozen=True)
class LoadResult:
    requests: int  # answered, whatever the status
    ok: int  # answered 2xx
    errors: int  # not answered (connection errors)
    statuses: dict[str, int]
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return self.errors + self.requests - self.ok


def _main_one(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    headers = dict(item.split(":", 1) for item in args.header)
    tally = asyncio.run(
        _drive(args.url, Path(args.body_file).read_bytes(), headers, args.connections, args.seconds, args.warmup)
    )
    sample = tally.latencies_s[:: max(1, len(tally.latencies_s) // 20000)]  # percentiles of a sample
    figures = {"statuses": dict(tally.statuses), "errors": tally.errors, "seconds": args.seconds, "latencies_s": sample}
    Path(args.out).write_text(json.dumps(figures))  # a file, not stdout: a full pipe must never block or cut it


class Load:
    """Load running in the background from `processes` client processes; `result()` waits for it."""

    def __init__(
        self,
        url: str,
        body: bytes,
        connections: int,
        seconds: float,
        *,
        warmup_s: float = 0.0,
        headers: dict[str, str] | None = None,
        processes: int = 1,
    ) -> None:
        self.seconds = seconds
        with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as handle:
            handle.write(body)
        self._body_path = handle.name
        shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
        header_args = [arg for name, value in (headers or {}).items() for arg in ("--header", f"{name}:{value}")]
        self._outputs = [f"{self._body_path}.{index}.json" for index in range(len(shares))]
        self._clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--url",
                    url,
                    "--body-file",
                    self._body_path,
                    "--connections",
                    str(share),
                    "--seconds",
                    str(seconds),
                    "--warmup",
                    str(warmup_s),
                    "--out",
                    output,
                    *header_args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for share, output in zip(shares, self._outputs)
            if share
        ]
        self._deadline_s = warmup_s + seconds + 60

    def result(self) -> LoadResult:
        statuses: Counter[int] = Counter()
        errors, latencies = 0, []
        try:
            for client, output in zip(self._clients, self._outputs):
                _, err = client.communicate(timeout=self._deadline_s)
                if client.returncode != 0:
                    raise RuntimeError(f"load client failed ({client.returncode}): {err[-500:]}")
                figures = json.loads(Path(output).read_text())
                statuses.update({int(code): count for code, count in figures["statuses"].items()})
                errors += figures["errors"]
                latencies += figures["latencies_s"]
        finally:
            self.stop()
        latencies.sort()
        ok = sum(count for code, count in statuses.items() if 200 <= code < 300)
        return LoadResult(
            sum(statuses.values()),
            ok,
            errors,
            {str(k): v for k, v in sorted(statuses.items())},
            self.seconds,
            _percentile_ms(latencies, 50),
            _percentile_ms(latencies, 99),
        )

    def stop(self) -> None:
        for client in self._clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        for path in [self._body_path, *self._outputs]:
            Path(path).unlink(missing_ok=True)


def run(url: str, body: bytes, connections: int, seconds: float, **options: object) -> LoadResult:
    return Load(url, body, connections, seconds, **options).result()  # type: ignore[arg-type]


def client_processes(connections: int) -> int:
    """Enough client processes to keep up, leaving most CPUs to the server under test."""
    return max(1, min(connections // 16, (os.cpu_count() or 1) // 4))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--out", required=True, help="where to write the JSON figures")
    _main_one(parser.parse_args())
