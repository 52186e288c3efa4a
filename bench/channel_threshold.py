"""Where shared-memory segments start to beat the socket on a worker's channel: the threshold in
inferd/segments.py (THRESHOLD_BYTES) is chosen from this.

    python bench/channel_threshold.py [--requests 40] [--sizes-kib 16 64 128 256 512 1024 4096 16384]

The real channel on both ends: the main end is inferd's asyncio MainChannel on an event loop, the
other end a process holding inferd's blocking Channel, as a worker does. Each round trip sends a
Batch holding one FP32 array of the size and gets it back as a BatchDone, so the figure covers
both directions: once with every array on the socket, once with every array in a segment. Prints
p50 and p90 per size and the smallest size from which segments win at every larger size.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inferd.channel import Channel, ChannelClosed, connect
from inferd.messages import Batch, BatchDone

NEVER = 2**62  # a threshold no array reaches: everything on the socket


def echo(channel: Channel) -> None:
    """The worker's side: answer each Batch with its arrays."""
    while True:
        try:
            message = channel.recv()
        except ChannelClosed:
            return
        channel.send(BatchDone(message.batch_id, message.payloads, 0.0))


async def measure(threshold_bytes: int, sizes_bytes: list[int], requests: int) -> dict[int, list[float]]:
    context = multiprocessing.get_context("spawn")
    main_end, worker_end = context.Pipe(duplex=True)
    worker = context.Process(target=echo, args=(Channel(worker_end, threshold_bytes),), daemon=True)
    worker.start()
    worker_end.close()
    sock = socket.socket(fileno=os.dup(main_end.fileno()))
    main_end.close()
    answers: asyncio.Queue[Any] = asyncio.Queue()
    channel = await connect(sock, answers.put_nowait, lambda: None, worker.pid, threshold_bytes=threshold_bytes)
    times: dict[int, list[float]] = {}
    for size in sizes_bytes:
        array = np.random.default_rng(size).random(size // 4, dtype=np.float32)
        times[size] = []
        for number in range(requests + 3):  # the first three warm the path
            started = time.perf_counter()
            channel.send(Batch(number, [{"input": array}]))
            done = await answers.get()
            elapsed = time.perf_counter() - started
            assert np.array_equal(done.results[0]["input"], array)
            if number >= 3:
                times[size].append(elapsed)
    sock.close()
    worker.join(10)
    return times


def p50_p90(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[max(int(len(ordered) * 0.9) - 1, 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--sizes-kib", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024, 4096, 16384])
    args = parser.parse_args()
    sizes = [kib * 1024 for kib in args.sizes_kib]
    on_socket = asyncio.run(measure(NEVER, sizes, args.requests))
    in_segments = asyncio.run(measure(0, sizes, args.requests))
    print(f"round trip of one FP32 array each way, {args.requests} sequential, load {os.getloadavg()[0]:.1f}")
    print(f"{'size':>10} {'socket p50':>11} {'p90':>7} {'segment p50':>12} {'p90':>7} {'segment/socket':>15}")
    wins = []
    for size in sizes:
        socket_p50, socket_p90 = p50_p90(on_socket[size])
        segment_p50, segment_p90 = p50_p90(in_segments[size])
        wins.append(segment_p50 < socket_p50)
        print(
            f"{size // 1024:>7} KiB {socket_p50 * 1000:>9.3f}ms {socket_p90 * 1000:>5.2f}ms "
            f"{segment_p50 * 1000:>10.3f}ms {segment_p90 * 1000:>5.2f}ms {segment_p50 / socket_p50:>14.2f}x"
        )
    from_index = next((i for i in range(len(sizes)) if all(wins[i:])), None)
    print("segments win from", "no size measured" if from_index is None else f"{sizes[from_index] // 1024} KiB up")


if __name__ == "__main__":
    main()
