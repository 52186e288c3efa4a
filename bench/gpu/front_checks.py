"""Check 8: the ceiling of inferd's one HTTP process next to a bare uvicorn app with one process per
CPU, both serving the tiny model at c=256, to decide whether inferd needs more HTTP processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import procs

from gpu.context import Context
from gpu.loadgen import LoadResult, client_processes, run
from gpu.report import Row, guarded, make, verdict
from gpu.serving import wait_until

BENCH = Path(__file__).resolve().parents[1]
ROWS_8 = [
    ("8a", "inferd front end: tiny model, c=256", "req/s figure; 0 failed"),
    ("8b", "bare uvicorn, N processes, c=256", "req/s figure; 0 failed; ratio decides"),
]
BODY = b'{"inputs": [[' + b",".join(b"0.25" for _ in range(16)) + b"]]}"
CONNECTIONS = 256


def _seconds(ctx: Context) -> tuple[float, float]:
    return (6.0, 2.0) if ctx.big_machine else (3.0, 1.0)


def front_end_ceiling(ctx: Context) -> list[Row]:
    inferd = guarded(ROWS_8[0], lambda: _inferd(ctx))
    bare = guarded(ROWS_8[1], lambda: _bare(ctx, inferd))
    return [inferd, bare]


def _load(ctx: Context, url: str) -> LoadResult:
    seconds, warmup_s = _seconds(ctx)
    return run(url, BODY, CONNECTIONS, seconds, warmup_s=warmup_s, processes=client_processes(CONNECTIONS))


def _inferd(ctx: Context) -> Row:
    workers = 4 if ctx.big_machine else 1
    model = {
        "name": "tiny",
        "path": ctx.files["tiny"],
        "device": "cpu",
        "workers_per_device": workers,
        "max_batch_size": 64,
        "batch_timeout_ms": 0,
        "max_queue_size": 4096,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
    }
    server = ctx.start("front", [model])
    try:
        result = _load(ctx, f"{server.url}/models/tiny/predict")
    finally:
        ctx.stop("front")
    ctx.front_rps = result.ok_per_s
    figure = (
        f"{result.ok_per_s:,.0f} req/s (p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms), {result.failed} failed"
    )
    note = (
        f"1 HTTP process, {workers} CPU worker(s), max_batch_size 64; {client_processes(CONNECTIONS)} load process(es)"
    )
    return make(ROWS_8[0], figure, verdict(result.failed == 0 and result.ok > 0), note)


def _bare(ctx: Context, inferd_row: Row) -> Row:
    processes = len(ctx.cpus)
    ready_dir = ctx.scratch / "bare-ready"
    ready_dir.mkdir(exist_ok=True)
    port = procs.free_port()
    env = dict(
        os.environ, INFERD_BARE_NAME="tiny", INFERD_BARE_MODEL=ctx.files["tiny"], INFERD_BARE_READY_DIR=str(ready_dir)
    )
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")])
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "gpu.bare_app:create_app",
        "--workers",
        str(processes),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    server = procs.ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", ctx.scratch / "bare.log", env=env, cwd=BENCH)
    with server:
        wait_until(lambda: len(list(ready_dir.iterdir())) >= processes, 120, f"{processes} bare processes")
        result = _load(ctx, f"http://127.0.0.1:{port}/models/tiny/predict")
    ratio = ctx.front_rps / result.ok_per_s if result.ok_per_s and ctx.front_rps else 0.0
    figure = (
        f"{result.ok_per_s:,.0f} req/s with {processes} processes (p50 {result.p50_ms:.1f} ms), {result.failed} failed; "
        f"inferd / bare = {ratio:.2f}"
    )
    decision = (
        "one HTTP process is inferd's ceiling here: more would help"
        if ratio < 0.5
        else "one HTTP process keeps up within 2x: more are not urgent"
    )
    note = f"{decision}; stdlib JSON, model in-process, 1 torch thread each"
    if not ctx.cuda:
        note += "; a non-GPU sanity run (this machine's CPUs), not the 16-core figure"
    return make(ROWS_8[1], figure, verdict(result.failed == 0 and result.ok > 0), note)
