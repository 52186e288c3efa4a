"""CPU contention: what pinning with matched thread counts saves when workers share a machine.

    python bench/contention.py [--seconds 5] [--batch-size 32]

Runs the 3x1024 MLP (the bench's compute-bound model) in worker processes exactly as inferd's
placement sets them up, each timing every batch, and prints p50/p99 per batch for:
- one worker alone, pinned to one CPU with one torch thread (the reference);
- one worker per CPU, each pinned to its own CPU with one thread (what inferd does);
- the same number of workers unpinned at torch's default thread count (one per CPU each), which is
  what a server that does not place its workers gets.
The ratio that matters is p99 of the pinned pair over p99 of the worker alone (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from typing import Any


def run_worker(cpus: list[int] | None, threads: int | None, seconds: float, batch_size: int, out: Any) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[layer for _ in range(3) for layer in (torch.nn.Linear(1024, 1024), torch.nn.ReLU())])
    batch = torch.randn(batch_size, 1024)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(batch)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - started)
    out.put((torch.get_num_threads(), times))


def measure(
    name: str, plans: list[tuple[list[int] | None, int | None]], seconds: float, batch_size: int
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=run_worker, args=(cpus, threads, seconds, batch_size, queue)) for cpus, threads in plans
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    times = sorted(t for _, ts in results for t in ts)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    row = {
        "name": name,
        "workers": len(plans),
        "threads": [threads for threads, _ in results],
        "batches_per_s": len(times) / seconds,
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": p99 * 1000,
    }
    print(
        f"{name:<34} workers {row['workers']}  threads {row['threads']}  "
        f"{row['batches_per_s']:8.1f} batches/s  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    print(f"machine: {len(cpus)} usable CPUs ({cpus}); MLP 3x1024, batch {args.batch_size}, {args.seconds:g} s each")
    alone = measure("one worker alone, pinned, 1 thread", [([cpus[0]], 1)], args.seconds, args.batch_size)
    pinned = measure("one per CPU, pinned, 1 thread each", [([cpu], 1) for cpu in cpus], args.seconds, args.batch_size)
    unpinned = measure(
        "one per CPU, unpinned, default threads", [(None, None) for _ in cpus], args.seconds, args.batch_size
    )
    print(f"p99 pinned / alone:   {pinned['p99_ms'] / alone['p99_ms']:.2f}  (target <= 1.5)")
    print(f"p99 unpinned / alone: {unpinned['p99_ms'] / alone['p99_ms']:.2f}")
    print(f"throughput pinned / unpinned: {pinned['batches_per_s'] / unpinned['batches_per_s']:.2f}")


if __name__ == "__main__":
    main()
