"""Every serving benchmark in one command, under one load generator, printed as one table.

    python bench/run_all.py            # 10 s per point, concurrency 1, 8, 64, every LitServe setting
    python bench/run_all.py --quick    # 3 s per point, one LitServe setting

Rows: raw (the TorchScript model called in a loop, rows/s at the batch size), bare (one starlette
route running the model in the handler, one uvicorn process), litserve (its batching at several
settings), inferd native (POST /models/{name}/predict) and inferd v2 (POST /v2/models/{name}/infer),
for the tiny model (Linear 16x16) and the 3x1024 MLP. Then the ratios against the targets.
Model files, configs and server logs go to a temporary directory (kept with --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import benchmodels
import inferd_target
import loadgen
import procs
from table import Ratio, Row, format_ratios, format_rows

BENCH_DIR = Path(__file__).resolve().parent
LITSERVE_ENV = "INFERD_BENCH_LITSERVE_PYTHON"


@dataclass(frozen=True)
class Settings:
    duration_s: float
    warmup_s: float
    repeats: int
    concurrencies: list[int]
    batch_size: int
    litserve_variants: list[str]
    litserve_timeout_ms: float
    inferd_workers: int
    inferd_timeout_ms: float
    inferd_cpus: list[int] | None
    models: list[str]
    targets: list[str]


# LitServe settings tried; the best at the highest concurrency is the one the ratios use.
LITSERVE_VARIANTS: dict[str, list[str]] = {
    "w2": ["--workers", "2"],  # LitServe's default: one API server per worker
    "w2-api1": ["--workers", "2", "--api-servers", "1"],
    "w1-api1": ["--workers", "1", "--api-servers", "1"],
    "w2-zmq": ["--workers", "2", "--fast-queue"],  # ZeroMQ queues between API servers and workers
}


@dataclass(frozen=True)
class Context:
    settings: Settings
    plan: procs.CpuPlan
    scratch: Path
    model_paths: dict[str, Path]


def native_body(model: str) -> bytes:
    return json.dumps({"inputs": [benchmodels.sample_row(model)]}).encode()


def v2_body(model: str) -> bytes:
    row = benchmodels.sample_row(model)
    tensor = {"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}
    return json.dumps({"inputs": [tensor]}).encode()


def measure(ctx: Context, url: str, body: bytes, concurrency: int) -> loadgen.LoadResult:
    """Warm up, then the median (by req/s) of `repeats` runs."""
    cpus = ctx.plan.loadgen_cpus
    if ctx.settings.warmup_s > 0:
        loadgen.run_load(url, body, concurrency, ctx.settings.warmup_s, taskset_cpus=cpus)
    runs = [
        loadgen.run_load(url, body, concurrency, ctx.settings.duration_s, taskset_cpus=cpus)
        for _ in range(ctx.settings.repeats)
    ]
    runs.sort(key=lambda run: run.requests_per_s)
    return runs[len(runs) // 2]


def to_row(target: str, model: str, result: loadgen.LoadResult, note: str = "") -> Row:
    return Row(
        target=target,
        model=model,
        concurrency=result.concurrency,
        requests_per_s=result.requests_per_s,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        note=note,
    )


def sweep(
    ctx: Context, target: str, model: str, url: str, body: bytes, note: str = ""
) -> list[Row]:
    rows = []
    for concurrency in ctx.settings.concurrencies:
        row = to_row(target, model, measure(ctx, url, body, concurrency), note)
        print(
            f"  {row.target:<22} {model:<5} c={concurrency:<3} {row.requests_per_s:>9,.0f} req/s "
            f"p50 {row.p50_ms:.2f} ms p99 {row.p99_ms:.2f} ms errors {row.errors}",
            flush=True,
        )
        rows.append(row)
    return rows


def run_raw(ctx: Context) -> list[Row]:
    rows = []
    for model in ctx.settings.models:
        argv = procs.pinned(
            [
                sys.executable,
                str(BENCH_DIR / "raw_model.py"),
                "--model",
                model,
                "--model-path",
                str(ctx.model_paths[model]),
                "--batch-size",
                str(ctx.settings.batch_size),
                "--seconds",
                str(ctx.settings.duration_s / 2),
                "--json",
            ],
            ctx.plan.server_cpus,
        )
        figures = json.loads(
            subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        )
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


def run_bare(ctx: Context, python: str, target: str) -> list[Row]:
    rows = []
    for model in ctx.settings.models:
        port = procs.free_port()
        argv = procs.pinned(
            [
                python,
                str(BENCH_DIR / "bare_server.py"),
                "--model-path",
                str(ctx.model_paths[model]),
                "--name",
                model,
                "--port",
                str(port),
            ],
            ctx.plan.server_cpus,
        )
        base = f"http://127.0.0.1:{port}"
        log = ctx.scratch / f"{target.replace(' ', '-')}-{model}.log"
        with procs.ServerProcess(argv, f"{base}/readyz", log):
            rows += sweep(
                ctx,
                target,
                model,
                f"{base}/models/{model}/predict",
                native_body(model),
                uvicorn_stack(python),
            )
    return rows


def uvicorn_stack(python: str) -> str:
    """Which event loop and HTTP parser uvicorn picks in that python ("auto" takes the fast ones)."""
    probe = (
        "import importlib.util as u; print('uvloop' if u.find_spec('uvloop') else 'asyncio', "
        "'httptools' if u.find_spec('httptools') else 'h11', sep='+')"
    )
    found = subprocess.run([python, "-c", probe], check=False, capture_output=True, text=True)
    return f"uvicorn {found.stdout.strip() or '?'}"


def litserve_python(option: str | None) -> tuple[str | None, str]:
    """The python of LitServe's own venv, or None and why it is skipped."""
    python = option or os.environ.get(LITSERVE_ENV)
    if not python:
        return None, f"no LitServe python given (--litserve-python or ${LITSERVE_ENV})"
    check = subprocess.run(
        [python, "-c", "import litserve, torch"], check=False, capture_output=True, text=True
    )
    if check.returncode != 0:
        return None, f"{python} cannot import litserve and torch: {check.stderr.strip()[-200:]}"
    return python, ""


def run_litserve(ctx: Context, python: str) -> list[Row]:
    rows = []
    for model in ctx.settings.models:
        for variant in ctx.settings.litserve_variants:
            port = procs.free_port()
            argv = procs.pinned(
                [
                    python,
                    str(BENCH_DIR / "litserve_server.py"),
                    "--model-path",
                    str(ctx.model_paths[model]),
                    "--name",
                    model,
                    "--port",
                    str(port),
                    "--max-batch-size",
                    str(ctx.settings.batch_size),
                    "--batch-timeout-ms",
                    str(ctx.settings.litserve_timeout_ms),
                    *LITSERVE_VARIANTS[variant],
                ],
                ctx.plan.server_cpus,
            )
            base = f"http://127.0.0.1:{port}"
            log = ctx.scratch / f"litserve-{model}-{variant}.log"
            with procs.ServerProcess(argv, f"{base}/health", log):
                rows += sweep(
                    ctx,
                    f"litserve {variant}",
                    model,
                    f"{base}/models/{model}/predict",
                    native_body(model),
                    note=f"batch {ctx.settings.batch_size}, {ctx.settings.litserve_timeout_ms:g} ms",
                )
    return rows


def run_inferd(ctx: Context, command: list[str]) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    note = (
        f"batch {ctx.settings.batch_size}, {ctx.settings.inferd_timeout_ms:g} ms, "
        f"{ctx.settings.inferd_workers} worker(s)"
        + (
            f", CPUs {procs.format_cpus(ctx.settings.inferd_cpus)}"
            if ctx.settings.inferd_cpus
            else ""
        )
    )
    for model in ctx.settings.models:
        port = procs.free_port()
        config = inferd_target.write_config(
            model,
            ctx.model_paths[model],
            port,
            max_batch_size=ctx.settings.batch_size,
            batch_timeout_ms=ctx.settings.inferd_timeout_ms,
            workers=ctx.settings.inferd_workers,
            cpus=ctx.settings.inferd_cpus or ctx.plan.server_cpus,
        )
        argv = procs.pinned([*command, "serve", str(config)], ctx.plan.server_cpus)
        base = f"http://127.0.0.1:{port}"
        server = procs.ServerProcess(
            argv,
            f"{base}/readyz",
            ctx.scratch / f"inferd-{model}.log",
            env=inferd_target.environment(),
            cwd=inferd_target.REPO_ROOT,
        )
        with server:
            if "inferd native" in ctx.settings.targets:
                rows += sweep(
                    ctx,
                    "inferd native",
                    model,
                    f"{base}/models/{model}/predict",
                    native_body(model),
                    note,
                )
            if "inferd v2" in ctx.settings.targets:
                rows += sweep(
                    ctx, "inferd v2", model, f"{base}/v2/models/{model}/infer", v2_body(model), note
                )
        if server.exit_code != 0:
            notes.append(
                f"inferd ({model}) exited {server.exit_code} after SIGTERM (expected 0); "
                f"log: {server.log_path}\n{server.log_tail(10)}"
            )
    return rows, notes


def find(rows: list[Row], target: str, model: str, concurrency: int | None) -> Row | None:
    return next(
        (
            r
            for r in rows
            if r.target == target and r.model == model and r.concurrency == concurrency
        ),
        None,
    )


def best_litserve(rows: list[Row], model: str, concurrency: int) -> Row | None:
    candidates = [
        r
        for r in rows
        if r.target.startswith("litserve") and r.model == model and r.concurrency == concurrency
    ]
    return max(candidates, key=lambda r: r.requests_per_s, default=None)


def throughput_ratio(name: str, ours: Row | None, theirs: Row | None) -> Ratio:
    if ours is None or theirs is None or theirs.requests_per_s == 0:
        return Ratio(name, None, ">= 1.00", "not measured")
    if ours.errors or theirs.errors:
        return Ratio(
            name, None, ">= 1.00", f"errors in {ours.target if ours.errors else theirs.target}"
        )
    return Ratio(
        name,
        ours.requests_per_s / theirs.requests_per_s,
        ">= 1.00",
        f"{ours.requests_per_s:,.0f} / {theirs.requests_per_s:,.0f} ({theirs.target})",
    )


def ratios(rows: list[Row], top: int) -> list[Ratio]:
    found = []
    tiny_inferd = find(rows, "inferd native", "tiny", top)
    tiny_bare = find(rows, "bare", "tiny", top)
    found.append(throughput_ratio(f"tiny c{top}: inferd / bare", tiny_inferd, tiny_bare))
    other_bare = find(rows, "bare (other python)", "tiny", top)
    if other_bare:
        found.append(
            throughput_ratio(f"tiny c{top}: inferd / bare (other python)", tiny_inferd, other_bare)
        )
    found.append(
        throughput_ratio(
            f"tiny c{top}: inferd / best litserve", tiny_inferd, best_litserve(rows, "tiny", top)
        )
    )
    mlp_inferd = find(rows, "inferd native", "mlp", top)
    raw_mlp = find(rows, "raw", "mlp", None)
    ceiling = min(
        (r for r in (tiny_bare, raw_mlp) if r), key=lambda r: r.requests_per_s, default=None
    )
    found.append(
        throughput_ratio(f"mlp c{top}: inferd / min(bare tiny, raw mlp)", mlp_inferd, ceiling)
    )
    found.append(
        throughput_ratio(
            f"mlp c{top}: inferd / best litserve", mlp_inferd, best_litserve(rows, "mlp", top)
        )
    )
    found.append(
        throughput_ratio(
            f"tiny c{top}: inferd v2 / inferd native",
            find(rows, "inferd v2", "tiny", top),
            tiny_inferd,
        )
    )
    found.append(
        latency_ratio(
            "tiny c1 p50: inferd / bare (timeout 0)",
            find(rows, "inferd native", "tiny", 1),
            find(rows, "bare", "tiny", 1),
        )
    )
    return found


def latency_ratio(name: str, ours: Row | None, theirs: Row | None) -> Ratio:
    if ours is None or theirs is None or not theirs.p50_ms or ours.p50_ms is None:
        return Ratio(name, None, "<= 1.00", "not measured")
    if ours.errors or theirs.errors:
        return Ratio(
            name, None, "<= 1.00", f"errors in {ours.target if ours.errors else theirs.target}"
        )
    return Ratio(
        name,
        ours.p50_ms / theirs.p50_ms,
        "<= 1.00",
        f"{ours.p50_ms:.2f} ms / {theirs.p50_ms:.2f} ms",
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s per point, 1 s warmup, one LitServe setting"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measured point (default 10, quick 3)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of load before each point (default 2, quick 1)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per point; the median is kept")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--models", nargs="+", choices=sorted(benchmodels.MODELS), default=["tiny", "mlp"]
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["raw", "bare", "litserve", "inferd native", "inferd v2"],
        help="which rows to run (names as in the table)",
    )
    parser.add_argument(
        "--cpus",
        choices=["auto", "split", "shared"],
        default="auto",
        help="auto: pin wrk away from the servers when there are 4+ CPUs",
    )
    parser.add_argument(
        "--bare-python",
        help="also run the bare endpoint under this python "
        "(e.g. one with uvloop and httptools) as the row 'bare (other python)'",
    )
    parser.add_argument("--litserve-python", help=f"LitServe venv's python (or ${LITSERVE_ENV})")
    parser.add_argument("--litserve-variants", nargs="+", choices=sorted(LITSERVE_VARIANTS))
    parser.add_argument("--litserve-timeout-ms", type=float, default=5.0)
    parser.add_argument(
        "--inferd-cmd", help="command that runs inferd (default: this python -m inferd)"
    )
    parser.add_argument("--inferd-workers", type=int, default=1, help="workers_per_device")
    parser.add_argument("--inferd-timeout-ms", type=float, default=0.0, help="batch_timeout_ms")
    parser.add_argument(
        "--inferd-cpus",
        help="cpu_affinity for inferd's workers, e.g. 1 or 2-7 (default: the servers' CPUs when "
        "pinned, else unset so inferd places them)",
    )
    parser.add_argument("--json-out", type=Path, help="also write every row and ratio as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch dir (models, configs, logs)"
    )
    return parser.parse_args(argv)


def parse_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


def settings_from(args: argparse.Namespace) -> Settings:
    variants = args.litserve_variants or (["w2"] if args.quick else list(LITSERVE_VARIANTS))
    return Settings(
        duration_s=args.duration or (3.0 if args.quick else 10.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0),
        repeats=args.repeats,
        concurrencies=args.concurrency,
        batch_size=args.batch_size,
        litserve_variants=variants,
        litserve_timeout_ms=args.litserve_timeout_ms,
        inferd_workers=args.inferd_workers,
        inferd_timeout_ms=args.inferd_timeout_ms,
        inferd_cpus=parse_cpus(args.inferd_cpus) if args.inferd_cpus else None,
        models=args.models,
        targets=args.targets,
    )


def run(ctx: Context, args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    targets = ctx.settings.targets
    if "raw" in targets:
        print("raw model", flush=True)
        rows += run_raw(ctx)
    if "bare" in targets:
        print("bare starlette endpoint", flush=True)
        rows += run_bare(ctx, sys.executable, "bare")
        if args.bare_python:
            rows += run_bare(ctx, args.bare_python, "bare (other python)")
    if "litserve" in targets:
        python, why = litserve_python(args.litserve_python)
        if python is None:
            notes.append(f"litserve rows skipped: {why}")
        else:
            print(f"litserve ({python})", flush=True)
            rows += run_litserve(ctx, python)
    if {"inferd native", "inferd v2"} & set(targets):
        command = inferd_target.command(args.inferd_cmd)
        ok, why = inferd_target.available(command)
        if not ok:
            notes.append(f"inferd rows skipped: {why}")
        else:
            print(f"inferd ({' '.join(command)})", flush=True)
            inferd_rows, inferd_notes = run_inferd(ctx, command)
            rows += inferd_rows
            notes += inferd_notes
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    plan = procs.plan_cpus(args.cpus)
    tool = (
        "wrk" if loadgen.have_wrk() else "python fallback (install Debian's wrk for real figures)"
    )
    print(
        f"machine: {plan.describe()}; load average {load_average()}\nload generator: {tool}, closed loop, "
        f"{settings.duration_s:g} s per point after {settings.warmup_s:g} s warmup, "
        f"median of {settings.repeats}",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-"))
    ctx = Context(settings, plan, scratch, benchmodels.write_all(scratch / "models"))
    try:
        rows, notes = run(ctx, args)
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(scratch)], check=False)
    top = max(settings.concurrencies)
    found = ratios(rows, top)
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
