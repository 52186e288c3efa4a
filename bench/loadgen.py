"""Closed-loop HTTP load: Debian's wrk with a Lua script, or a small Python fallback.

Every row of every bench goes through `run_load`, so servers are only ever compared under the same
load generator. wrk is closed loop: each connection sends its next request when the previous answer
arrives, so `concurrency` is the number of requests in flight. The Lua script POSTs one fixed JSON
body and, when the run ends, prints one line `WRKJSON {...}` with counts and latency percentiles.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LUA_TEMPLATE = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [=[{body}]=]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    errors: int  # non-2xx answers plus socket errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    tool: str

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    url: str,
    body: bytes,
    concurrency: int,
    duration_s: float,
    *,
    taskset_cpus: list[int] | None = None,
    tool: str = "auto",
    timeout_s: float = 10.0,
) -> LoadResult:
    """POST `body` to `url` from `concurrency` closed-loop clients for `duration_s` seconds."""
    if tool == "wrk" or (tool == "auto" and have_wrk()):
        return _run_wrk(url, body, concurrency, duration_s, taskset_cpus, timeout_s)
    return _run_python(url, body, concurrency, duration_s, timeout_s)


def _wrk_threads(concurrency: int, taskset_cpus: list[int] | None) -> int:
    cores = len(taskset_cpus) if taskset_cpus else 1
    return max(1, min(concurrency, cores))


def _run_wrk(
    url: str,
    body: bytes,
    concurrency: int,
    duration_s: float,
    taskset_cpus: list[int] | None,
    timeout_s: float,
) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA_TEMPLATE.format(body=body.decode()))
    argv = [
        "wrk",
        f"-t{_wrk_threads(concurrency, taskset_cpus)}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        script.name,
        url,
    ]
    if taskset_cpus:
        argv = ["taskset", "-c", ",".join(map(str, taskset_cpus)), *argv]
    try:
        finished = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=duration_s + 60
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next((x for x in finished.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(
            f"wrk printed no summary (exit {finished.returncode}): "
            f"{finished.stdout[-500:]} {finished.stderr[-500:]}"
        )
    figures = json.loads(line[len("WRKJSON ") :])
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        concurrency=concurrency,
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        errors=errors,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        tool="wrk",
    )


def _run_python(
    url: str, body: bytes, concurrency: int, duration_s: float, timeout_s: float
) -> LoadResult:
    """Threads with keep-alive connections: weaker than wrk (the GIL), for machines without it."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop_at = time.perf_counter() + duration_s

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        headers = {"Content-Type": "application/json"}
        while (started := time.perf_counter()) < stop_at:
            try:
                connection.request("POST", path, body=body, headers=headers)
                answer = connection.getresponse()
                answer.read()
                ok = 200 <= answer.status < 400
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=timeout_s
                )
            latencies[index].append(time.perf_counter() - started)
            errors[index] += 0 if ok else 1
        connection.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = sorted(x for per_client in latencies for x in per_client)
    return LoadResult(
        concurrency=concurrency,
        requests=len(every),
        seconds=elapsed,
        errors=sum(errors),
        p50_ms=_percentile_ms(every, 50),
        p90_ms=_percentile_ms(every, 90),
        p99_ms=_percentile_ms(every, 99),
        max_ms=1000 * every[-1] if every else 0.0,
        tool="python",
    )


def _percentile_ms(sorted_s: list[float], percent: float) -> float:
    if not sorted_s:
        return 0.0
    if len(sorted_s) == 1:
        return 1000 * sorted_s[0]
    return 1000 * statistics.quantiles(sorted_s, n=100, method="inclusive")[int(percent) - 1]
