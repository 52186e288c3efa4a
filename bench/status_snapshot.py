"""What one read of /status.json costs the main process: builds a Daemon (workers not started) with
N models, gives each model's request-duration histogram traffic, and times StatusBoard.snapshot()
and its JSON encoding. The request path does no work for the page, so this is its whole cost.

    python bench/status_snapshot.py [--models 50] [--reads 2000]
"""

from __future__ import annotations

import argparse
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
    board = StatusBoard(daemon)
    for model in daemon.models.values():
        for _ in range(200):
            model.metrics.request_done(200, random.expovariate(1 / 0.01))
    board.snapshot()  # the first read only stores a baseline
    time.sleep(0.6)  # from here on, every read differences the histograms against it
    started = time.perf_counter()
    for _ in range(args.reads):
        body = orjson.dumps(board.snapshot())
    per_read_s = (time.perf_counter() - started) / args.reads
    if board.snapshot()["rates_window_s"] is None:
        raise SystemExit("the reads did not difference the histograms; the figure would leave that work out")
    print(f"models: {args.models}, reads: {args.reads}")
    print(f"one /status.json (snapshot + JSON): {per_read_s * 1e6:.0f} us, {len(body)} bytes")
    print(f"at one read per 1.5 s per open page: {per_read_s / 1.5 * 100:.3f} % of one core per page")


if __name__ == "__main__":
    main()
