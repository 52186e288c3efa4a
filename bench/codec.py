"""The channel's codec on the messages of a small model's request, in one process: microseconds to
pickle and unpickle each message with the segment codec (inferd/segments.py: arrays by type, small
ones as their bytes) and with plain pickle (numpy's own array reduce), for reference.

    python bench/codec.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inferd.channel import decode, encode
from inferd.messages import Batch, BatchDone
from inferd.segments import SegmentReader, SegmentWriter, segment_prefix

ROW = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 16)
MESSAGES = {
    "Batch, 1 request of 1x16 FP32": Batch(1, [{"input": ROW}]),
    "BatchDone, 1 result of 1x16 FP32": BatchDone(1, [{"output": ROW}], 0.0001),
    "Batch, 8 requests of 1x16 FP32": Batch(1, [{"input": ROW.copy()} for _ in range(8)]),
    "Batch, 1 request of text items": Batch(1, [["a photograph of a cat"]]),
}


def per_call_us(call: Callable[[], object], rounds: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(rounds):
        call()
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20_000)
    rounds = parser.parse_args().rounds
    writer, reader = SegmentWriter(segment_prefix(os.getpid(), 0, "m")), SegmentReader()
    print(f"{'message':36s} {'codec dumps':>12s} {'codec loads':>12s} {'pickle dumps':>13s} {'pickle loads':>13s}")
    for name, message in MESSAGES.items():
        figures = timings(message, writer, reader, rounds)
        print(f"{name:36s} " + " ".join(f"{us:10.2f} us" for us in figures))
    writer.close()


def timings(message: object, writer: SegmentWriter, reader: SegmentReader, rounds: int) -> list[float]:
    frames = encode(message, writer)
    first, buffers = bytearray(frames[0]), [bytearray(frame) for frame in frames[1:]]
    plain = pickle.dumps(message, protocol=5)
    return [
        per_call_us(lambda: encode(message, writer), rounds),
        per_call_us(lambda: decode(first, buffers, reader), rounds),
        per_call_us(lambda: pickle.dumps(message, protocol=5), rounds),
        per_call_us(lambda: pickle.loads(plain), rounds),
    ]


if __name__ == "__main__":
    main()
