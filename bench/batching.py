"""inferd's default batching against fixed batch timeouts, the bare endpoint and LitServe, in one run.

    python bench/batching.py                       # tiny and mlp, c=1 and c=64, 4 s per point
    python bench/batching.py --repeats 1 --no-interleave   # one quick pass

By default each model's servers are measured in turns, three times (the median run is kept, the
spread shown): on a small shared machine one pass decides the c=64 comparison by chance, since
the same server ran at about 3,300 or 2,450 req/s from one run to the next (mlp, main process CPU
per request 280-300 or 370-420 us, same placement), and the best of several fixed timeouts, each
measured once, is the likeliest to have caught a fast moment.

Rows per model: `bare` (the model in a starlette handler), `litserve w2` (when its venv is given, as
for run_all.py), `inferd native` with the shipped defaults (no `batch_timeout_ms`: the learned
policy), and the same inferd with `batch_wait: fixed` at each timeout of `--sweep-ms` (every
partial batch waits that long, the classic dynamic batcher). Then, against the targets:
- tiny c=1 p50: inferd default - bare, at most 0.3 ms;
- c=64 req/s: inferd default / the best fixed timeout, at least 1.0, on each model;
and the main process's CPU time per request at c=64 for the default inferd (utime+stime of the
server's own process over the measured window, divided by the requests answered in it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import benchmodels
import loadgen
import procs
import run_all
import targets
from table import Row, format_rows

DEFAULT_LABEL = ""
C1_P50_ALLOWANCE_MS = 0.3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--models", nargs="+", choices=sorted(benchmodels.MODELS), default=["tiny", "mlp"])
    add("--concurrency", type=int, nargs="+", default=[1, 64])
    add("--sweep-ms", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0], help="fixed timeouts to try")
    add("--duration", type=float, default=4.0)
    add("--warmup", type=float, default=1.0)
    add("--repeats", type=int, default=3, help="runs per point; the median is kept")
    add(
        "--interleave", action=argparse.BooleanOptionalAction, default=True,
        help="measure a model's servers in turns (see run_all.py)",
    )  # fmt: skip
    add("--batch-size", type=int, default=32)
    add("--litserve-python", help=f"LitServe venv's python (or ${targets.LITSERVE_ENV})")
    add("--busy-poll-us", type=float, help="every inferd's busy_poll_us (default: inferd's own; 0: no polling)")
    add("--keep", action="store_true")
    return parser.parse_args(argv)


def endpoints(args: argparse.Namespace, model_paths: dict[str, Path], notes: list[str]) -> list[targets.Endpoint]:
    where = targets.Placement(None, None)
    litserve_python, why = targets.litserve_python(args.litserve_python)
    if litserve_python is None:
        notes.append(f"LitServe rows skipped: {why}")
    command = [sys.executable, "-m", "inferd"]
    found: list[targets.Endpoint] = []
    for model in args.models:
        path = model_paths[model]
        found.append(targets.bare(model, path, where))
        if litserve_python:
            found.append(targets.litserve(model, path, where, litserve_python, "w2", args.batch_size, 5.0))
        poll = args.busy_poll_us
        found += targets.inferd(model, path, where, command, ["native"], args.batch_size, None, 1, busy_poll_us=poll)
        for timeout_ms in args.sweep_ms:
            label = f" fixed {timeout_ms:g} ms"
            found += targets.inferd(
                model, path, where, command, ["native"], args.batch_size, timeout_ms, 1, "fixed", label, poll
            )
    return found


def cpu_s(pid: int) -> float:
    """utime + stime of one process (not its children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_cpu_per_request(ctx: run_all.Context, endpoint: targets.Endpoint, concurrency: int) -> str:
    """The default inferd's main-process CPU per request under load, measured on a fresh server."""
    with run_all.served(ctx, [endpoint.server], []) as processes:
        pid = processes[endpoint.server.key].pid
        loadgen.run_load(endpoint.url, endpoint.body, concurrency, ctx.settings.warmup_s)
        before = cpu_s(pid)
        result = loadgen.run_load(endpoint.url, endpoint.body, concurrency, ctx.settings.duration_s)
        used_s = cpu_s(pid) - before
    per_request_us = used_s / max(result.requests, 1) * 1e6
    return f"{endpoint.model} c={concurrency}: main process {per_request_us:.0f} us CPU per request ({result.requests} requests)"


def verdicts(rows: list[Row], models: list[str], top: int) -> list[str]:
    def find(target: str, model: str, concurrency: int) -> Row | None:
        return next((r for r in rows if (r.target, r.model, r.concurrency) == (target, model, concurrency)), None)

    lines = []
    bare, default = find("bare", "tiny", 1), find("inferd native", "tiny", 1)
    if bare and default:
        added = default.p50_ms - bare.p50_ms
        verdict = "pass" if added <= C1_P50_ALLOWANCE_MS else "FAIL"
        lines.append(f"tiny c=1 p50: inferd default {default.p50_ms:.2f} ms - bare {bare.p50_ms:.2f} ms = {added:+.2f} ms (<= {C1_P50_ALLOWANCE_MS}) {verdict}")
    for model in models:
        fixed = [r for r in rows if r.model == model and r.concurrency == top and "fixed" in r.target]
        default = find("inferd native", model, top)
        if not fixed or default is None:
            continue
        best = max(fixed, key=lambda r: r.requests_per_s)
        ratio = default.requests_per_s / best.requests_per_s if best.requests_per_s else 0.0
        verdict = "pass" if ratio >= 1.0 else "FAIL"
        lines.append(
            f"{model} c={top}: inferd default {default.requests_per_s:,.0f} req/s / best fixed "
            f"({best.target.removeprefix('inferd native ')}) {best.requests_per_s:,.0f} = {ratio:.2f} (>= 1.00) {verdict}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = run_all.Settings(
        args.duration, args.warmup, args.repeats, args.interleave, args.concurrency, args.batch_size,
        args.models, ["bare", "litserve", "inferd native"],
    )  # fmt: skip
    print(f"load generator: {'wrk' if loadgen.have_wrk() else 'python fallback'}; load average {run_all.load_average()}")
    scratch = Path(tempfile.mkdtemp(prefix="inferd-batching-"))
    notes: list[str] = []
    try:
        ctx = run_all.Context(settings, procs.plan_cpus("shared"), scratch, benchmodels.write_all(scratch / "models"))
        found = endpoints(args, ctx.model_paths, notes)
        schedule = run_all.run_interleaved if args.interleave else run_all.run_sequential
        rows = schedule(ctx, found, notes)
        default_tiny = next((e for e in found if e.target == "inferd native" and e.model == "tiny"), None)
        cpu_line = (
            main_cpu_per_request(replace(ctx, settings=settings), default_tiny, max(args.concurrency))
            if default_tiny is not None
            else "main process CPU per request: measured on the tiny model only (not in --models)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{format_rows(rows)}\n")
    for line in [*verdicts(rows, args.models, max(args.concurrency)), cpu_line, *notes]:
        print(line)
    print(f"load average at the end: {run_all.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
