"""Load against a running inferd's example models: throughput, p50 and p99 at each concurrency.

    python bench/load.py --url http://127.0.0.1:8080 --model tiny
    python bench/load.py --url http://127.0.0.1:8080 --model minilm --concurrency 1 8
    python bench/load.py --url http://127.0.0.1:8080 --model tiny --protocol v2

Bodies: tiny gets one row of --width floats (16), minilm one short sentence; any other model needs
--width (one row of floats) or --body (a JSON file sent as is). Uses wrk when it is installed,
else a slower Python load generator (said in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import loadgen

SENTENCE = "inferd batches requests from many clients into one forward pass."


def body_for(model: str, protocol: str, width: int) -> bytes:
    if model == "minilm":
        if protocol == "v2":
            tensor = {"name": "input", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}
            return json.dumps({"inputs": [tensor]}).encode()
        return json.dumps({"inputs": [SENTENCE]}).encode()
    row = [round((i % 7) * 0.125 - 0.375, 3) for i in range(width)]
    if protocol == "v2":
        tensor = {"name": "input", "shape": [1, width], "datatype": "FP32", "data": row}
        return json.dumps({"inputs": [tensor]}).encode()
    return json.dumps({"inputs": [row]}).encode()


def endpoint(url: str, model: str, protocol: str) -> str:
    base = url.rstrip("/")
    return (
        f"{base}/v2/models/{model}/infer" if protocol == "v2" else f"{base}/models/{model}/predict"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--protocol", choices=["native", "v2"], default="native")
    parser.add_argument("--width", type=int, default=16, help="floats per row for tensor models")
    parser.add_argument("--body", type=Path, help="JSON file to POST instead of the built-in body")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    body = args.body.read_bytes() if args.body else body_for(args.model, args.protocol, args.width)
    url = endpoint(args.url, args.model, args.protocol)
    print(
        f"{url}  ({len(body)} byte body, {'wrk' if args.tool != 'python' and loadgen.have_wrk() else 'python'} load)"
    )
    print(f"{'conc':>4} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for concurrency in args.concurrency:
        if args.warmup > 0:
            loadgen.run_load(url, body, concurrency, args.warmup, tool=args.tool)
        result = loadgen.run_load(url, body, concurrency, args.duration, tool=args.tool)
        print(
            f"{concurrency:>4} {result.requests_per_s:>10,.0f} {result.p50_ms:>8.2f} "
            f"{result.p99_ms:>8.2f} {result.errors:>6}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
