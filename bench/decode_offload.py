"""Where decoding a body should leave the event loop: prints, per body size, the time to decode a
native JSON body inline and the cost of a hop to the decode thread and back.

    python bench/decode_offload.py
"""

from __future__ import annotations

import asyncio
import time

import orjson

from inferd.admission import Admission
from inferd.messages import TensorInfo
from inferd.protocols.native import decode_body

INPUTS = (TensorInfo("input", "FP32", (-1, -1)),)
REPEATS = 50


def best_of(function: object, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


async def hop_s(admission: Admission) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        await admission.decode(1 << 30, int)  # a trivial function, always on the decode thread
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    print(f"hop to the decode thread and back: {asyncio.run(hop_s(Admission(1 << 30))) * 1e3:.3f} ms")
    print(f"{'body':>10} {'floats ms':>10} {'objects ms':>11}")
    for size_bytes in (4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20):
        floats = orjson.dumps({"inputs": [[0.123456789] * 16] * (size_bytes // 200)})
        objects = orjson.dumps({"inputs": {f"k{i}": 0 for i in range(size_bytes // 10)}})
        float_s = best_of(lambda body=floats: decode_body(body, INPUTS, False, 1 << 20))
        object_s = best_of(lambda body=objects: orjson.loads(body))
        print(f"{size_bytes >> 10:>8} K {float_s * 1e3:>10.3f} {object_s * 1e3:>11.3f}")


if __name__ == "__main__":
    main()
