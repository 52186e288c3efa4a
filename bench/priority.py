"""High-priority latency alone, then beside a flood of low-priority requests on the same model, then
beside the same flood with no priorities at all (what FIFO gives), and the queue's own cost.

    python bench/priority.py [--duration 10] [--workers 4] [--flood 32] [--batch-ms 40]

The model is a handler whose batch takes `--batch-ms` plus `--item-ms` per item (times a random
factor within `--jitter`), sleeping (no CPU), so the model is the bottleneck and what is measured is the queue's order, not how the machine's
cores are shared. The flood is wrk (closed loop, `--flood` connections, `X-Priority: 3`); the
trickle is one client in this process sending one request at a time with `X-Priority: 1`, pausing
`--pause-ms` between them. Without wrk the flood falls back to Python threads.

The issue's target: high-priority p99 beside the flood within 1.5x of its value alone. No batch is
ever cut short, so the batcher keeps room for urgent requests (inferd/urgent_reserve.py): while
they arrive, a low batch starts only if a worker stays free or one is due to free within a quarter
of an urgent batch, and an urgent batch takes low requests along only where they barely slow it.
That room is taken from the flood: compare its rate with the FIFO phase's.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import ServerProcess, free_port  # noqa: E402

SLEEPY = """
import random
import time

from inferd import Handler


class Sleepy(Handler):
    def predict(self, items):
        args = self.handler_args
        spread = random.uniform(1 - args["jitter"], 1 + args["jitter"])
        time.sleep((args["batch_ms"] + args["item_ms"] * len(items)) * spread / 1000)
        return items
"""

FLOOD_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Priority"] = "{priority}"
wrk.body = '{{"inputs": ["flood"]}}'
done = function(summary, latency, requests)
  io.write(string.format("WRKSUMMARY %d %d\\n", summary.requests, summary.duration))
end
"""


@dataclass(frozen=True)
class Figures:
    phase: str
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    flood_per_s: float | None


def config(folder: Path, port: int, args: argparse.Namespace) -> Path:
    (folder / "sleepy.py").write_text(SLEEPY)
    path = folder / "priority.yaml"
    path.write_text(
        f"""
server: {{host: 127.0.0.1, port: {port}, log_level: warning}}
models:
  - name: work
    handler: "{folder}/sleepy.py:Sleepy"
    handler_args: {{batch_ms: {args.batch_ms}, item_ms: {args.item_ms}, jitter: {args.jitter}}}
    workers_per_device: {args.workers}
    max_batch_size: {args.max_batch_size}
    max_queue_size: 4096
"""
    )
    return path


def trickle(port: int, priority: str, duration_s: float, pause_s: float) -> list[float]:
    """Latencies (s) of one client sending one request at a time for `duration_s`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", "X-Priority": priority}
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        connection.request("POST", "/models/work/predict", body=b'{"inputs": ["trickle"]}', headers=headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"the trickle got {answer.status}")
        latencies.append(time.perf_counter() - started)
        time.sleep(pause_s)
    connection.close()
    return latencies


class Flood:
    """A closed-loop flood for as long as it runs: wrk if installed, else Python threads."""

    def __init__(self, port: int, connections: int, priority: str, duration_s: float) -> None:
        self.port, self.connections, self.priority, self.duration_s = port, connections, priority, duration_s
        self.requests_per_s: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join()

    def _run(self) -> None:
        if shutil.which("wrk"):
            self._run_wrk()
        else:
            self._run_threads()

    def _run_wrk(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(FLOOD_LUA.format(priority=self.priority))
        argv = ["wrk", "-t1", f"-c{self.connections}", f"-d{round(self.duration_s)}s", "--timeout=60s",
                "-s", script.name, f"http://127.0.0.1:{self.port}/models/work/predict"]  # fmt: skip
        finished = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=self.duration_s + 120)
        os.unlink(script.name)
        line = next((x for x in finished.stdout.splitlines() if x.startswith("WRKSUMMARY ")), None)
        if line is not None:
            requests, duration_us = map(int, line.split()[1:])
            self.requests_per_s = requests / (duration_us / 1e6)

    def _run_threads(self) -> None:
        done: deque[int] = deque()
        started = time.perf_counter()
        threads = [
            threading.Thread(target=lambda: done.append(len(trickle(self.port, self.priority, self.duration_s, 0))))
            for _ in range(self.connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.requests_per_s = sum(done) / (time.perf_counter() - started)


def figures(phase: str, latencies: list[float], flood_per_s: float | None) -> Figures:
    ms = sorted(x * 1000 for x in latencies)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return Figures(phase, len(ms), statistics.median(ms), p99, ms[-1], flood_per_s)


def measure(port: int, args: argparse.Namespace) -> list[Figures]:
    pause_s = args.pause_ms / 1000
    trickle(port, "1", 1.0, pause_s)  # warm the connection and the workers
    rows = [figures("high alone", trickle(port, "1", args.duration, pause_s), None)]
    for phase, flood_priority, trickle_priority in (
        ("high beside a low flood", "3", "1"),
        ("no priorities (FIFO) beside the flood", "0", "0"),
    ):
        with Flood(port, args.flood, flood_priority, args.duration + 2) as flood:
            time.sleep(1.0)  # the flood fills the queue before the trickle starts
            latencies = trickle(port, trickle_priority, args.duration, pause_s)
        rows.append(figures(phase, latencies, flood.requests_per_s))
    return rows


def queue_cost(requests: int = 200_000) -> tuple[float, float]:
    """ns per request through a plain deque and through the priority queue, every request at the
    default level (what a request that names no priority costs), a batch of 8 at a time."""
    from inferd.priority_queue import PriorityQueue

    @dataclass(eq=False)
    class Item:
        level: int
        arrived: float

    items = [Item(2, float(n)) for n in range(requests)]
    plain: deque[Item] = deque()
    started = time.perf_counter()
    for start in range(0, requests, 8):
        for item in items[start : start + 8]:
            plain.append(item)
        batch = [item for item in plain][:8]
        for _ in batch:
            plain.popleft()
    plain_ns = (time.perf_counter() - started) / requests * 1e9
    queue: PriorityQueue[Item] = PriorityQueue(3, 1.0)
    started = time.perf_counter()
    for start in range(0, requests, 8):
        for item in items[start : start + 8]:
            queue.append(item)
        queue.promote(float(start))
        batch = [item for item in queue][:8]
        queue.remove_taken(batch)
    return plain_ns, (time.perf_counter() - started) / requests * 1e9


async def _batcher_cost(requests: int, priorities: tuple[int, ...]) -> float:
    """us per request through a Batcher whose one in-memory worker answers at once, 8 clients."""
    import asyncio

    from inferd.batching import Batcher, BatchPolicy
    from inferd.messages import Batch, BatchDone

    class Instant:
        name = "instant"
        ready_count = 1
        unavailable_reason = None
        idle_slots = 1

        def submit(self, batch: Batch) -> asyncio.Future[BatchDone]:
            future = asyncio.get_running_loop().create_future()
            future.set_result(BatchDone(batch.batch_id, batch.payloads, 0.0))
            return future

        def idle_worker(self) -> Instant:
            return self

    class Quiet:
        def __getattr__(self, name: str) -> object:
            return lambda *args, **kwargs: None

    batcher = Batcher("b", BatchPolicy(8, 0.0, 10_000, 30.0), Instant(), Quiet(), lambda *args: None)  # type: ignore[arg-type]
    batcher.start()

    async def client(index: int) -> None:
        for n in range(requests // 8):
            await batcher.infer(["x"], 1, None, priorities[(index + n) % len(priorities)])

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(8)))
    elapsed = time.perf_counter() - started
    await batcher.stop()
    return elapsed / requests * 1e6


def batcher_cost(requests: int = 40_000) -> tuple[float, float]:
    import asyncio

    return asyncio.run(_batcher_cost(requests, (0,))), asyncio.run(_batcher_cost(requests, (1, 3, 2)))


def print_table(rows: list[Figures]) -> None:
    alone = rows[0].p99_ms
    print(f"{'phase':40} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99/alone':>9} {'flood/s':>8}")
    for row in rows:
        flood = f"{row.flood_per_s:8.0f}" if row.flood_per_s is not None else f"{'-':>8}"
        print(f"{row.phase:40} {row.count:5d} {row.p50_ms:8.1f} {row.p99_ms:8.1f} {row.max_ms:8.1f} "
              f"{row.p99_ms / alone:9.2f} {flood}")  # fmt: skip


def print_costs() -> None:
    plain_ns, queue_ns = queue_cost()
    print(f"queue cost per request, no priority given: deque {plain_ns:.0f} ns, priority queue {queue_ns:.0f} ns")
    default_us, mixed_us = batcher_cost()
    print(f"whole batcher per request (in-memory worker, 8 clients): {default_us:.1f} us with no priority given, "
          f"{mixed_us:.1f} us with three priorities mixed")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of trickle per phase")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-ms", type=float, default=40.0, help="each batch's fixed cost")
    parser.add_argument("--item-ms", type=float, default=2.0, help="each item's cost in a batch")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="each batch's time varies by up to this share (0: identical batches, and the "
                        "workers, started together, stay in step)")  # fmt: skip
    parser.add_argument("--flood", type=int, default=32, help="the flood's connections")
    parser.add_argument("--pause-ms", type=float, default=20.0, help="the trickle's pause between requests")
    parser.add_argument("--costs-only", action="store_true", help="only the queue's and the batcher's own cost")
    args = parser.parse_args()
    if args.costs_only:
        return print_costs()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        path = config(Path(folder), port, args)
        argv = [sys.executable, "-m", "inferd", "serve", str(path)]
        with ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", Path(folder) / "inferd.log", cwd=REPO):
            rows = measure(port, args)
    print(f"model: {args.workers} workers, batches of up to {args.max_batch_size}, "
          f"{args.batch_ms:g} ms + {args.item_ms:g} ms/item (sleeping, +-{args.jitter:.0%}); "
          f"flood: {args.flood} connections")  # fmt: skip
    print_table(rows)
    print_costs()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
