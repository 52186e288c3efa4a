"""What one read of /status.json costs the main process: builds a Daemon (workers not started) with
N models, gives each model's request-duration histogram traffic, and times StatusBoard.snapshot()
and its JSON encoding. The request path does no work for the page, so this is its whole cost.

    python bench/status_snapshot.py [--models 50] [--reads 2000]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import orjson

from inferd.config import parse_config
from inferd.daemon import Daemon
from inferd.placement import Host, plan
from inferd.status import StatusBoard

HANDLERS = Path(__file__).resolve().parent.parent / "tests" / "models" / "handlers.py"


def build_daemon(models: int) -> Daemon:
    lines = [f"  - {{name: m{n}, handler: '{HANDLERS}:Echo'}}" for n in range(models)]
    config = parse_config("models:\n" + "\n".join(lines), "bench.yaml")
    return Daemon(config, plan(config, Host.detect()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    daemon = build_daemon(args.models)
    clock = PollingClock()
    board = StatusBoard(daemon, clock=clock)
    for model in daemon.models.values():
        for _ in range(200):
            model.metrics.request_done("http", 200, random.expovariate(1 / 0.01))
    board.snapshot()  # the first read only stores a baseline
    print(f"models: {args.models}, reads: {args.reads}, load average {os.getloadavg()[0]:.1f}")
    for what, step_s in (("each read walks the histogram", 1.0), ("reads within 0.5 s share one walk", 0.0)):
        clock.step_s = step_s
        per_read_s, size = time_reads(board, args.reads)
        print(f"one /status.json (snapshot + JSON), {what}: {per_read_s * 1e6:.0f} us, {size} bytes")
    print("a page reads once per 1.5 s: the first figure / 1.5 s is its share of one core")


class PollingClock:
    """The board's clock: `step_s` later at every read, as a page polling that often would see."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.step_s = 1.0

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


def time_reads(board: StatusBoard, reads: int) -> tuple[float, int]:
    started = time.perf_counter()
    for _ in range(reads):
        body = orjson.dumps(board.snapshot())
    return (time.perf_counter() - started) / reads, len(body)


if __name__ == "__main__":
    main()
