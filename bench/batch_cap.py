"""The learned batch-size cap on a model dearer per item at large batches: images/s, before and after.

    python bench/batch_cap.py --before /path/to/tree-without-cap [--rounds 3] [--duration 20]

EfficientNet-Lite0 (models/efficientnet_lite0.pt) served alone, 2 workers (one torch thread each),
max_batch_size 32, one image per request as a v2 binary body, `--concurrency` closed-loop clients
(an asyncio httpx client in this process). Two servers, the same config: one run from `--before`
(a source tree, put first on PYTHONPATH) and one from this tree; measured in turns, `--rounds`
times, each after `--warmup` seconds of the same load (the cap learns under it). Prints images/s,
p50 and the batch sizes from /metrics (inferd_batch_size_cap where the server has it), and the
machine's load average; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from procs import ServerProcess

HERE = Path(__file__).resolve().parent.parent


def v2_body() -> tuple[bytes, dict[str, str]]:
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 3, 224, 224],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes},
                }
            ]
        }
    ).encode()
    return header + image.tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def write_config(folder: Path, port: int, max_batch_size: int) -> Path:
    config = folder / f"effnet-{port}.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\n"
        "models:\n"
        f"  - {{name: effnet, path: {HERE / 'models/efficientnet_lite0.pt'}, max_batch_size: {max_batch_size},\n"
        "     workers_per_device: 2, max_queue_size: 1024,\n"
        "     inputs: [{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}],\n"
        "     outputs: [{name: logits, datatype: FP32, shape: [-1, 1000]}]}\n"
    )
    return config


async def load(url: str, body: bytes, headers: dict[str, str], clients: int, duration_s: float) -> list[float]:
    """Each client's request times over `duration_s`; raises on any answer but 200."""
    times: list[float] = []
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                answer = await client.post(url, content=body, headers=headers)
                if answer.status_code != 200:
                    raise SystemExit(f"{url}: {answer.status_code} {answer.text[:200]}")
                times.append(time.perf_counter() - started)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return times


def batch_figures(base: str) -> str:
    text = httpx.get(f"{base}/metrics").text
    cap = re.search(r'^inferd_batch_size_cap\{model="effnet"\} (\S+)', text, re.M)
    total = re.search(r'^inferd_batch_size_sum\{model="effnet"\} (\S+)', text, re.M)
    count = re.search(r'^inferd_batch_size_count\{model="effnet"\} (\S+)', text, re.M)
    mean = float(total.group(1)) / float(count.group(1)) if total and count and float(count.group(1)) else 0.0
    return f"mean batch {mean:5.1f} (since start), cap {cap.group(1) if cap else '-'}"


def measure(name: str, base: str, args: argparse.Namespace, rates: dict[str, list[float]]) -> None:
    body, headers = v2_body()
    url = f"{base}/v2/models/effnet/infer"
    asyncio.run(load(url, body, headers, args.concurrency, args.warmup))
    times = asyncio.run(load(url, body, headers, args.concurrency, args.duration))
    rate = len(times) / args.duration
    rates[name].append(rate)
    load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{name:<7} {rate:7.1f} images/s  p50 {statistics.median(times) * 1000:7.1f} ms  "
        f"{batch_figures(base)}  load {load_average}",
        flush=True,
    )


def server(tree: Path, config: Path, port: int, folder: Path) -> ServerProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, "-m", "inferd", "serve", str(config)]
    return ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / f"{port}.log", env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a source tree without the cap")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=40.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=26100)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="inferd-cap-"))
    trees = {"before": args.before.resolve(), "after": HERE}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    print(f"EfficientNet-Lite0, 2 workers, max_batch_size {args.max_batch_size}, c={args.concurrency}")
    for round_index in range(args.rounds):
        for offset, (name, tree) in enumerate(trees.items()):
            port = args.port + 2 * round_index + offset
            with server(tree, write_config(folder, port, args.max_batch_size), port, folder):
                measure(name, f"http://127.0.0.1:{port}", args, rates)
    before, after = (statistics.median(rates[name]) for name in trees)
    print(f"median images/s: before {before:.1f}, after {after:.1f}, after/before {after / before:.2f}")


if __name__ == "__main__":
    main()
