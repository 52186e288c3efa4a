"""Every serving benchmark in one command, under one load generator, printed as one table.

    python bench/run_all.py                # 10 s per point, concurrency 1, 8, 64, every LitServe setting
    python bench/run_all.py --quick        # 3 s per point, one LitServe setting
    python bench/run_all.py --interleave --repeats 3   # fairer on a busy machine (see README)

Rows: raw (the TorchScript model called in a loop, rows/s at the batch size), bare (one starlette
route running the model in the handler, one uvicorn process), litserve (its batching at several
settings), inferd native (POST /models/{name}/predict) and inferd v2 (POST /v2/models/{name}/infer),
for the tiny model (Linear 16x16) and the 3x1024 MLP. Then the ratios against the targets.
Model files, configs and server logs go to a temporary directory (kept with --keep).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import benchmodels
import inferd_target
import loadgen
import procs
import targets
from scoring import ratios
from table import Row, format_ratios, format_rows

ALL_TARGETS = ["raw", "bare", "litserve", "inferd native", "inferd v2"]


@dataclass(frozen=True)
class Settings:
    duration_s: float
    warmup_s: float
    repeats: int
    interleave: bool
    concurrencies: list[int]
    batch_size: int
    models: list[str]
    targets: list[str]


@dataclass(frozen=True)
class Context:
    settings: Settings
    plan: procs.CpuPlan
    scratch: Path
    model_paths: dict[str, Path]


def one_run(ctx: Context, endpoint: targets.Endpoint, concurrency: int) -> loadgen.LoadResult:
    cpus = ctx.plan.loadgen_cpus
    if ctx.settings.warmup_s > 0:
        loadgen.run_load(
            endpoint.url, endpoint.body, concurrency, ctx.settings.warmup_s, taskset_cpus=cpus
        )
    return loadgen.run_load(
        endpoint.url, endpoint.body, concurrency, ctx.settings.duration_s, taskset_cpus=cpus
    )


def to_row(endpoint: targets.Endpoint, runs: list[loadgen.LoadResult]) -> Row:
    """The median run by req/s; errors are summed over every run."""
    median = sorted(runs, key=lambda run: run.requests_per_s)[len(runs) // 2]
    spread = ""
    if len(runs) > 1:
        low, high = min(r.requests_per_s for r in runs), max(r.requests_per_s for r in runs)
        spread = f"runs {low:,.0f}..{high:,.0f}; "
    return Row(
        target=endpoint.target,
        model=endpoint.model,
        concurrency=median.concurrency,
        requests_per_s=median.requests_per_s,
        p50_ms=median.p50_ms,
        p99_ms=median.p99_ms,
        errors=sum(r.errors for r in runs),
        note=spread + endpoint.note,
    )


def say(endpoint: targets.Endpoint, result: loadgen.LoadResult) -> None:
    print(
        f"  {endpoint.target:<22} {endpoint.model:<5} c={result.concurrency:<3} "
        f"{result.requests_per_s:>9,.0f} req/s p50 {result.p50_ms:.2f} ms "
        f"p99 {result.p99_ms:.2f} ms errors {result.errors}",
        flush=True,
    )


def by_server(endpoints: list[targets.Endpoint]) -> dict[str, list[targets.Endpoint]]:
    groups: dict[str, list[targets.Endpoint]] = defaultdict(list)
    for endpoint in endpoints:
        groups[endpoint.server.key].append(endpoint)
    return groups


def run_sequential(ctx: Context, endpoints: list[targets.Endpoint], notes: list[str]) -> list[Row]:
    """One server at a time: start it, every concurrency `repeats` times, stop it."""
    rows = []
    for group in by_server(endpoints).values():
        with served(ctx, [group[0].server], notes):
            for endpoint in group:
                for concurrency in ctx.settings.concurrencies:
                    runs = [
                        one_run(ctx, endpoint, concurrency) for _ in range(ctx.settings.repeats)
                    ]
                    say(endpoint, runs[len(runs) // 2])
                    rows.append(to_row(endpoint, runs))
    return rows


def run_interleaved(ctx: Context, endpoints: list[targets.Endpoint], notes: list[str]) -> list[Row]:
    """Every server of a model up at once; each round measures every endpoint in turn, so a change
    in background load lands on all of them alike. Servers not being measured are paused
    (SIGSTOP), since some poll while idle; each run's warmup follows the resume."""
    runs: dict[tuple[int, int], list[loadgen.LoadResult]] = defaultdict(list)
    for model in ctx.settings.models:
        mine = [e for e in endpoints if e.model == model]
        servers = [group[0].server for group in by_server(mine).values()]
        with served(ctx, servers, notes) as processes:
            for process in processes.values():
                process.pause()
            for round_number in range(ctx.settings.repeats):
                print(f" {model}: round {round_number + 1} of {ctx.settings.repeats}", flush=True)
                for concurrency in ctx.settings.concurrencies:
                    for endpoint in mine:
                        processes[endpoint.server.key].resume()
                        result = one_run(ctx, endpoint, concurrency)
                        processes[endpoint.server.key].pause()
                        say(endpoint, result)
                        runs[(endpoints.index(endpoint), concurrency)].append(result)
    return [
        to_row(endpoint, runs[(i, c)])
        for i, endpoint in enumerate(endpoints)
        for c in ctx.settings.concurrencies
        if runs[(i, c)]
    ]


@contextlib.contextmanager
def served(
    ctx: Context, servers: list[targets.ServerSpec], notes: list[str]
) -> Iterator[dict[str, procs.ServerProcess]]:
    """Start the servers (each ready before the next starts); stop them all; note odd exits."""
    with contextlib.ExitStack() as stack:
        started = {}
        for spec in servers:
            started[spec.key] = stack.enter_context(spec.process(ctx.scratch))
        yield started
        stack.close()
        for key, process in started.items():
            if key.startswith("inferd") and process.exit_code != 0:
                notes.append(
                    f"{key} exited {process.exit_code} after SIGTERM (expected 0)\n"
                    f"{process.log_tail(10)}"
                )


def run_raw(ctx: Context) -> list[Row]:
    rows = []
    for model in ctx.settings.models:
        argv = [
            sys.executable,
            str(targets.BENCH_DIR / "raw_model.py"),
            "--model",
            model,
            "--model-path",
            str(ctx.model_paths[model]),
            "--batch-size",
            str(ctx.settings.batch_size),
            "--seconds",
            str(ctx.settings.duration_s / 2),
            "--json",
        ]
        done = subprocess.run(
            procs.pinned(argv, ctx.plan.server_cpus), check=True, capture_output=True, text=True
        )
        figures = json.loads(done.stdout)
        rows.append(
            Row(
                target="raw",
                model=model,
                concurrency=None,
                requests_per_s=figures["rows_per_s"],
                p50_ms=None,
                p99_ms=None,
                errors=None,
                note=f"rows/s at batch {figures['batch_size']}, {figures['threads']} threads, "
                f"{figures['ms_per_batch']:.3f} ms/batch",
            )
        )
        print(f"  raw {model}: {figures['rows_per_s']:,.0f} rows/s", flush=True)
    return rows


def endpoints_for(
    ctx: Context, args: argparse.Namespace, notes: list[str]
) -> list[targets.Endpoint]:
    where = targets.Placement(
        ctx.plan.server_cpus, parse_cpus(args.inferd_cpus) if args.inferd_cpus else None
    )
    wanted, found = ctx.settings.targets, []
    litserve_python, why = (
        targets.litserve_python(args.litserve_python) if "litserve" in wanted else (None, "")
    )
    if why:
        notes.append(f"litserve rows skipped: {why}")
    protocols = [name for name in ("native", "v2") if f"inferd {name}" in wanted]
    command = inferd_target.command(args.inferd_cmd)
    inferd_ok, why = inferd_target.available(command) if protocols else (False, "")
    if why:
        notes.append(f"inferd rows skipped: {why}")
    for model in ctx.settings.models:
        path = ctx.model_paths[model]
        if "bare" in wanted:
            found.append(targets.bare(model, path, where))
            if args.bare_python:
                found.append(
                    targets.bare(model, path, where, args.bare_python, "bare (other python)")
                )
        if litserve_python:
            found += [
                targets.litserve(
                    model,
                    path,
                    where,
                    litserve_python,
                    variant,
                    ctx.settings.batch_size,
                    args.litserve_timeout_ms,
                )
                for variant in args.litserve_variants
            ]
        if inferd_ok:
            found += targets.inferd(
                model,
                path,
                where,
                command,
                protocols,
                ctx.settings.batch_size,
                args.inferd_timeout_ms,
                args.inferd_workers,
            )
    return found


def parse_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="3 s per point, 1 s warmup, one LitServe setting")
    add("--duration", type=float, help="seconds per measured point (default 10, quick 3)")
    add("--warmup", type=float, help="seconds of load before each point (default 2, quick 1)")
    add("--repeats", type=int, default=1, help="runs per point; the median is kept")
    add(
        "--interleave",
        action="store_true",
        help="start every server of a model at once and measure them in turns, round after round",
    )
    add("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    add("--batch-size", type=int, default=32)
    add("--models", nargs="+", choices=sorted(benchmodels.MODELS), default=["tiny", "mlp"])
    add(
        "--targets",
        nargs="+",
        choices=ALL_TARGETS,
        default=ALL_TARGETS,
        metavar="TARGET",
        help=f"rows to run, from {ALL_TARGETS}",
    )
    add(
        "--cpus",
        choices=["auto", "split", "shared"],
        default="auto",
        help="auto: pin wrk away from the servers when there are 4+ CPUs",
    )
    add(
        "--bare-python",
        help="also run the bare endpoint under this python (e.g. one with uvloop "
        "and httptools) as the row 'bare (other python)'",
    )
    add("--litserve-python", help=f"LitServe venv's python (or ${targets.LITSERVE_ENV})")
    add("--litserve-variants", nargs="+", choices=sorted(targets.LITSERVE_VARIANTS))
    add("--litserve-timeout-ms", type=float, default=5.0)
    add("--inferd-cmd", help="command that runs inferd (default: this python -m inferd)")
    add("--inferd-workers", type=int, default=1, help="workers_per_device")
    add("--inferd-timeout-ms", type=float, default=None, help="batch_timeout_ms (default: none set)")
    add(
        "--inferd-cpus",
        help="cpu_affinity for inferd's workers, e.g. 1 or 2-7 (default: the "
        "servers' CPUs when pinned, else unset so inferd places them)",
    )
    add("--json-out", type=Path, help="also write every row and ratio as JSON")
    add("--keep", action="store_true", help="keep the scratch dir (models, configs, logs)")
    args = parser.parse_args(argv)
    if not args.litserve_variants:
        args.litserve_variants = ["w2"] if args.quick else list(targets.LITSERVE_VARIANTS)
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        duration_s=args.duration or (3.0 if args.quick else 10.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0),
        repeats=args.repeats,
        interleave=args.interleave,
        concurrencies=args.concurrency,
        batch_size=args.batch_size,
        models=args.models,
        targets=args.targets,
    )


def run(ctx: Context, args: argparse.Namespace, notes: list[str]) -> list[Row]:
    rows = []
    if "raw" in ctx.settings.targets:
        print("raw model", flush=True)
        rows += run_raw(ctx)
    endpoints = endpoints_for(ctx, args, notes)
    schedule = run_interleaved if ctx.settings.interleave else run_sequential
    return rows + schedule(ctx, endpoints, notes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    plan = procs.plan_cpus(args.cpus)
    tool = (
        "wrk" if loadgen.have_wrk() else "python fallback (install Debian's wrk for real figures)"
    )
    print(
        f"machine: {plan.describe()}; load average {load_average()}\n"
        f"load generator: {tool}, closed loop, {settings.duration_s:g} s per point after "
        f"{settings.warmup_s:g} s warmup, median of {settings.repeats}"
        f"{', interleaved' if settings.interleave else ''}",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-"))
    ctx = Context(settings, plan, scratch, benchmodels.write_all(scratch / "models"))
    notes: list[str] = []
    try:
        rows = run(ctx, args, notes)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    found = ratios(rows, max(settings.concurrencies))
    print(f"\nload average at the end: {load_average()} (other work on the machine skews figures)")
    print(f"\n{format_rows(rows)}\n\n{format_ratios(found)}")
    for note in notes:
        print(f"note: {note}")
    if args.keep:
        print(f"scratch kept: {scratch}")
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "machine": plan.describe(),
                    "settings": asdict(settings),
                    "rows": [asdict(r) for r in rows],
                    "ratios": [dict(asdict(r), verdict=r.verdict) for r in found],
                    "notes": notes,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
