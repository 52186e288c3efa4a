"""Steady load against an inferd this script starts, and the resident memory it held before and after.

    python bench/soak.py                      # 10 minutes, tiny model, 8 clients
    python bench/soak.py --minutes 1 --model mlp --concurrency 64

Memory (RSS) of the daemon's main process and of each worker (its children, found with psutil) is
sampled after warmup and again at the end of the load, with a line every --sample-every seconds in
between; the script prints both samples and the % change. A steady server changes by a few % at most:
a number that keeps climbing from one sample to the next is a leak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import benchmodels
import inferd_target
import loadgen
import procs
import psutil
from targets import native_body


@dataclass(frozen=True)
class MemorySample:
    at_s: float
    rss_bytes: dict[str, int]  # "main", "worker <pid>", "helper <pid>" (resource tracker) -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.rss_bytes.values())


def _role(process: psutil.Process, main_pid: int) -> str:
    """Workers are spawned children, or children of the forkserver (itself a child of main)."""
    command = " ".join(process.cmdline())
    if "spawn_main" in command or ("forkserver" in command and process.ppid() != main_pid):
        return "worker"
    return "forkserver" if "forkserver" in command else "helper"


def sample_memory(pid: int, started: float) -> MemorySample:
    main = psutil.Process(pid)
    rss = {"main": main.memory_info().rss}
    for child in main.children(recursive=True):
        try:
            role = _role(child, pid)
            rss[f"{role} {child.pid}"] = child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return MemorySample(at_s=time.monotonic() - started, rss_bytes=rss)


def mib(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"


def change(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "n/a"


def report(first: MemorySample, last: MemorySample) -> str:
    lines = [f"{'process':<16} {'start':>12} {'end':>12} {'change':>8}"]
    for name in sorted(first.rss_bytes.keys() | last.rss_bytes.keys()):
        before, after = first.rss_bytes.get(name), last.rss_bytes.get(name)
        if before is None or after is None:
            lines.append(
                f"{name:<16} {mib(before or 0):>12} {mib(after or 0):>12} "
                f"{'(restarted)' if before is None else '(gone)':>8}"
            )
            continue
        lines.append(f"{name:<16} {mib(before):>12} {mib(after):>12} {change(before, after):>8}")
    lines.append(
        f"{'total':<16} {mib(first.total_bytes):>12} {mib(last.total_bytes):>12} "
        f"{change(first.total_bytes, last.total_bytes):>8}"
    )
    return "\n".join(lines)


def soak(server: procs.ServerProcess, url: str, body: bytes, args: argparse.Namespace) -> int:
    loadgen.run_load(url, body, args.concurrency, args.warmup)
    started = time.monotonic()
    first = sample_memory(server.pid, started)
    outcome: list[loadgen.LoadResult] = []
    load = threading.Thread(
        target=lambda: outcome.append(
            loadgen.run_load(url, body, args.concurrency, args.minutes * 60)
        )
    )
    load.start()
    while load.is_alive():
        load.join(timeout=args.sample_every)
        if load.is_alive():
            now = sample_memory(server.pid, started)
            print(
                f"  {now.at_s:>6.0f} s  total RSS {mib(now.total_bytes)} "
                f"({change(first.total_bytes, now.total_bytes)})",
                flush=True,
            )
    last = sample_memory(server.pid, started)
    result = outcome[0]
    print(
        f"\nload: {result.requests:,} requests in {result.seconds:.0f} s, "
        f"{result.requests_per_s:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms, errors {result.errors}\n"
    )
    print(report(first, last))
    return 0 if result.errors == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", choices=sorted(benchmodels.MODELS), default="tiny")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of load before the first sample"
    )
    parser.add_argument(
        "--sample-every", type=float, default=30.0, help="seconds between progress lines"
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=1, help="workers_per_device")
    parser.add_argument(
        "--inferd-cmd", help="command that runs inferd (default: this python -m inferd)"
    )
    args = parser.parse_args(argv)
    command = inferd_target.command(args.inferd_cmd)
    ok, why = inferd_target.available(command)
    if not ok:
        print(f"cannot run inferd: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="inferd-soak-") as scratch:
        model_path = benchmodels.write(args.model, Path(scratch))
        port = procs.free_port()
        config = inferd_target.write_config(
            args.model,
            model_path,
            port,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            workers=args.workers,
            cpus=None,
        )
        base = f"http://127.0.0.1:{port}"
        print(
            f"inferd serve {config}: {args.minutes:g} min of {args.concurrency} clients on "
            f"{args.model}",
            flush=True,
        )
        server = procs.ServerProcess(
            [*command, "serve", str(config)],
            f"{base}/readyz",
            Path(scratch) / "inferd.log",
            env=inferd_target.environment(),
            cwd=inferd_target.REPO_ROOT,
        )
        with server:
            status = soak(
                server, f"{base}/models/{args.model}/predict", native_body(args.model), args
            )
        print(f"inferd exited {server.exit_code} after SIGTERM")
        return status


if __name__ == "__main__":
    sys.exit(main())
