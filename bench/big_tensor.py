"""A 4 MB tensor through the v2 binary extension, beside the same tensor as v2 JSON and native JSON.

    python bench/big_tensor.py [--mib 4] [--requests 30]

Starts inferd with a TorchScript model that takes one FP32 row of N floats and returns its sum, then
sends sequential requests (one client, so the figure is the per-request cost) and prints the median
and p90 latency and MB/s for each encoding. Binary tensors stay numpy views of the request body in
the main process and cross to the worker as one out-of-band buffer, never as JSON lists or pickled
data; the JSON rows show what that saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import ServerProcess, free_port


def build_model(folder: Path) -> Path:
    import torch

    class RowSum(torch.nn.Module):
        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return rows.sum(dim=1, keepdim=True)

    path = folder / "rowsum.pt"
    torch.jit.script(RowSum()).save(str(path))
    return path


def v2_binary_body(array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(array.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": array.nbytes},
            }
        ],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    text = json.dumps(header).encode()
    return text + array.tobytes(), {
        "Inference-Header-Content-Length": str(len(text)),
        "Content-Type": "application/octet-stream",
    }


def timed(client: httpx.Client, url: str, body: bytes, headers: dict[str, str], count: int) -> list[float]:
    times = []
    for _ in range(count + 2):
        started = time.perf_counter()
        answer = client.post(url, content=body, headers=headers)
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"{url}: {answer.status_code} {answer.text[:200]}")
    return times[2:]  # the first two warm the path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    floats = int(args.mib * 1024 * 1024 / 4)
    array = np.random.default_rng(0).random((1, floats), dtype=np.float32)
    folder = Path(tempfile.mkdtemp(prefix="inferd-big-"))
    port = free_port()
    config = folder / "big.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, log_level: warning, max_request_bytes: 268435456}}\n"
        f"models:\n  - {{name: rowsum, path: {build_model(folder)}, inputs: [{{name: input, shape: [-1, {floats}]}}]}}\n"
    )
    argv = [sys.executable, "-m", "inferd", "serve", str(config)]
    with ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / "inferd.log"):
        base = f"http://127.0.0.1:{port}"
        binary_body, binary_headers = v2_binary_body(array)
        json_rows = array.tolist()
        v2_json = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, floats], "datatype": "FP32", "data": json_rows[0]}]}
        ).encode()
        native_json = json.dumps({"inputs": json_rows}).encode()
        plain = {"Content-Type": "application/json"}
        print(
            f"one FP32 row of {floats:,} floats ({array.nbytes / 2**20:.1f} MiB), {args.requests} sequential requests"
        )
        with httpx.Client(timeout=120) as client:
            for name, url, body, headers in (
                ("v2 binary", f"{base}/v2/models/rowsum/infer", binary_body, binary_headers),
                ("v2 JSON", f"{base}/v2/models/rowsum/infer", v2_json, plain),
                ("native JSON", f"{base}/models/rowsum/predict", native_json, plain),
            ):
                times = sorted(timed(client, url, body, headers, args.requests))
                median = statistics.median(times)
                p90 = times[int(len(times) * 0.9) - 1]
                print(
                    f"{name:<12} body {len(body) / 2**20:6.1f} MiB  p50 {median * 1000:8.1f} ms  p90 {p90 * 1000:8.1f} ms  {array.nbytes / 2**20 / median:7.1f} MiB/s of tensor"
                )
        check = struct.unpack(
            "<f", httpx.post(f"{base}/v2/models/rowsum/infer", content=binary_body, headers=binary_headers).content[-4:]
        )[0]
        print(f"binary answer {check:.3f} vs numpy {float(array.sum()):.3f}")


if __name__ == "__main__":
    main()
