"""Concurrent I/O waits on one worker: a handler whose `predict` is `async def` and awaits
`--wait-ms`, served once with max_concurrency 1 and once with max_concurrency N, each on one worker.

    python bench/async_handler.py [--requests 10] [--wait-ms 100] [--rounds 5]

Each round sends N requests at once (N = --requests = the second model's max_concurrency) and
times the round until the last answer. With max_concurrency 1 the waits run one after another
(about N x wait); with N they overlap (about one wait plus the HTTP and batching cost). Prints the
median round per model and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import ServerProcess, free_port  # noqa: E402

WAIT = """
import asyncio

from inferd import Handler


class Wait(Handler):
    async def predict(self, items):
        await asyncio.sleep(float(self.handler_args["wait_s"]))
        return items
"""


async def _rounds(url: str, model: str, requests: int, rounds: int) -> list[float]:
    import httpx

    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def one_round() -> float:
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(client.post(f"/models/{model}/predict", json={"inputs": [n]}) for n in range(requests))
            )
            for answer in answers:
                answer.raise_for_status()
            return time.perf_counter() - started

        await one_round()  # opens the connections the measured rounds reuse
        return [await one_round() for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10, help="requests per round, and max_concurrency")
    parser.add_argument("--wait-ms", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "wait.py").write_text(WAIT)
        port = free_port()
        handler = f"{folder}/wait.py:Wait"
        wait = f"handler_args: {{wait_s: {args.wait_ms / 1000}}}"
        (folder / "async.yaml").write_text(
            f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\nmodels:\n"
            f"  - {{name: in_turn, handler: {handler}, {wait}}}\n"
            f"  - {{name: overlapping, handler: {handler}, {wait}, max_concurrency: {args.requests}}}\n"
        )
        argv = [sys.executable, "-m", "inferd", "serve", str(folder / "async.yaml")]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        url = f"http://127.0.0.1:{port}"
        with ServerProcess(argv, f"{url}/readyz", folder / "async.log", env=env, cwd=REPO):
            medians = {
                model: statistics.median(asyncio.run(_rounds(url, model, args.requests, args.rounds)))
                for model in ("in_turn", "overlapping")
            }
    print(f"{args.requests} concurrent waits of {args.wait_ms:g} ms on one worker, median of {args.rounds} rounds:")
    print(f"  max_concurrency 1:  {medians['in_turn'] * 1000:8.1f} ms")
    print(f"  max_concurrency {args.requests}: {medians['overlapping'] * 1000:8.1f} ms")
    print(f"  speed-up {medians['in_turn'] / medians['overlapping']:.1f}x")


if __name__ == "__main__":
    main()
