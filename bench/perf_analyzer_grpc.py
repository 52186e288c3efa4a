"""Triton's perf_analyzer against inferd's gRPC service: `-i grpc`, and `-i grpc --shared-memory
system` (perf_analyzer creates, registers and fills the regions itself), on the tiny example model
(16 floats in) and on a large-input model (a row-sum of one 4 MiB FP32 row).

    python bench/perf_analyzer_grpc.py [--seconds 3] [--concurrency 1 4] [--perf-venv /work/venvs/perf]

perf_analyzer is set up as bench/perf_analyzer.py does it (its own venv with the binary of the
tritonclient 2.51.0 wheel, nvidia-cuda-runtime-cu12, Debian's libb64-0d). Fixed time windows, so a
busy machine still gives figures. Prints inferences/s and p50/p99 latency per run; `errors` is
inferd's own count of non-200 answers during the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from big_tensor import build_model
from perf_analyzer import REPO, ROW, ensure_perf_analyzer
from procs import ServerProcess, free_port

BIG_FLOATS = 1024 * 1024  # one 4 MiB FP32 row


def config_text(port: int, grpc_port: int, folder: Path) -> str:
    return f"""server: {{host: 127.0.0.1, port: {port}, grpc_port: {grpc_port}, log_level: warning,
          max_request_bytes: 268435456}}
models:
  - name: tiny
    path: {REPO / "models" / "tiny.pt"}
    max_batch_size: 32
    inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]
  - name: rowsum
    path: {build_model(folder)}
    max_batch_size: 4
    inputs: [{{name: input, datatype: FP32, shape: [-1, {BIG_FLOATS}]}}]
    outputs: [{{name: output, datatype: FP32, shape: [-1, 1]}}]
"""


def non_200(url: str, model: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    # Other labels (protocol) sort after model: each (code, protocol) series is summed.
    pattern = rf'^inferd_requests_total\{{code="(\d+)",model="{model}"(?:,[^}}]*)?\}} (\S+)$'
    found = re.findall(pattern, text, re.MULTILINE)
    return int(sum(float(count) for code, count in found if code != "200"))


def command(
    binary: Path, model: str, grpc_url: str, shm: bool, concurrency: int, seconds: float, folder: Path
) -> list[str]:
    argv = [
        str(binary), "-m", model, "-u", grpc_url, "-i", "grpc",
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-mode", "time_windows", "--measurement-interval", str(int(seconds * 1000)),
        "--max-trials", "3", "--stability-percentage", "1000",
    ]  # fmt: skip
    if model == "tiny":
        data = folder / "tiny.json"
        data.write_text(json.dumps({"data": [{"input": {"content": ROW, "shape": [16]}}]}))
        argv += ["--input-data", str(data)]
    else:
        argv += ["--input-data", "zero"]
    if shm:
        argv += ["--shared-memory", "system", "--output-shared-memory-size", "4096"]
    return argv


def run(argv: list[str], env: dict[str, str], url: str, model: str, report: Path) -> str:
    before = non_200(url, model)
    result = subprocess.run([*argv, "-f", str(report)], env=env, check=False, capture_output=True, text=True)
    errors = non_200(url, model) - before
    if result.returncode != 0:
        last = " ".join((result.stdout + result.stderr).strip().splitlines()[-2:])
        return f"exit {result.returncode}: {last[:300]}  (errors {errors})"
    row = next(csv.DictReader(report.open()))
    return (
        f"{float(row['Inferences/Second']):>10.1f} inf/s  p50 {float(row['p50 latency']) / 1000:>8.2f} ms  "
        f"p99 {float(row['p99 latency']) / 1000:>8.2f} ms  errors {errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement window")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--perf-venv", type=Path, default=Path(os.environ.get("PERF_VENV", "/work/venvs/perf")))
    args = parser.parse_args()
    binary, env = ensure_perf_analyzer(args.perf_venv)
    folder = Path(tempfile.mkdtemp(prefix="inferd-pa-grpc-"))
    port, grpc_port = free_port(), free_port()
    config = folder / "pa.yaml"
    config.write_text(config_text(port, grpc_port, folder))
    url = f"http://127.0.0.1:{port}"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with ServerProcess([sys.executable, "-m", "inferd", "serve", str(config)], f"{url}/readyz", folder / "inferd.log"):
        for model in ("tiny", "rowsum"):
            for shm in (False, True):
                for concurrency in args.concurrency:
                    argv = command(binary, model, f"127.0.0.1:{grpc_port}", shm, concurrency, args.seconds, folder)
                    figures = run(argv, env, url, model, folder / f"{model}-{shm}-{concurrency}.csv")
                    mode = "grpc + system shm" if shm else "grpc"
                    print(f"{model:<7} {mode:<18} c={concurrency:<3} {figures}", flush=True)
                    print("   ", " ".join(argv).replace(str(binary), "perf_analyzer"))


if __name__ == "__main__":
    main()
