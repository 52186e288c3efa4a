"""Triton's perf_analyzer against inferd's v2 route, beside inferd's native route at the same load.

    python bench/perf_analyzer.py [--seconds 3] [--concurrency 1 8 64] [--perf-venv /work/venvs/perf]

Sets up perf_analyzer if it is missing: its own venv with the binary that the tritonclient 2.51.0
wheel ships (newer `perf-analyzer` wheels need glibc 2.38), nvidia-cuda-runtime-cu12 (the binary
loads libcudart even for HTTP) and Debian's libb64-0d. Starts inferd with one tiny model
(Linear(16,16), max_batch_size 32, batch_timeout_ms 2, two workers), then measures:
- perf_analyzer on /v2/models/tiny/infer with JSON and with binary tensors, fixed input data (its
  random data can hold NaN, which JSON cannot carry) and fixed time windows (its stability check
  would otherwise exit without figures on a busy 2-core machine);
- wrk (bench/loadgen.py; a Python fallback where wrk is missing) on the native route and on the v2
  JSON route with the same row, so the two protocols are also compared under one load generator.
Errors are the server's own count of non-200 answers during the run (inferd_requests_total), or
wrk's count of failures where that is higher. Load generator and server share the machine's cores: compare rows of the
same client only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import loadgen

REPO = Path(__file__).resolve().parent.parent
ROW = [round(0.125 * (i - 8), 3) for i in range(16)]  # one fixed row of 16 finite FP32 values
CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, log_level: warning}}
models:
  - name: tiny
    path: {models}/tiny.pt
    max_batch_size: 32
    batch_timeout_ms: 2
    workers_per_device: 2
    inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]
"""


@dataclass(frozen=True)
class Figures:
    client: str
    route: str
    concurrency: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    note: str = ""


# ---- perf_analyzer set-up -------------------------------------------------------------------


def ensure_perf_analyzer(venv: Path) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in, installing what is missing."""
    binary = venv / "bin" / "perf_analyzer"
    if not binary.exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, "tritonclient==2.51.0", "nvidia-cuda-runtime-cu12"], check=True)
    if "libb64.so.0d" not in subprocess.run(["ldconfig", "-p"], check=False, capture_output=True, text=True).stdout:
        if os.geteuid() != 0:
            sys.exit("perf_analyzer needs Debian's libb64-0d: apt-get install libb64-0d")
        subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=True)
    cudart = next(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    env = {**os.environ, "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    return binary, env


# ---- inferd ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_inferd(workdir: Path) -> Iterator[str]:
    if not (REPO / "models" / "tiny.pt").exists():
        subprocess.run([sys.executable, str(REPO / "models" / "build_examples.py")], check=True)
    port = free_port()
    config = workdir / "bench.yaml"
    config.write_text(CONFIG.format(port=port, models=REPO / "models"))
    log = (workdir / "inferd.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "inferd", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"inferd exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit("inferd did not become ready within 120 s")


def non_200_answers(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    # Other labels (protocol) sort after model: each (code, protocol) series is summed.
    found = re.findall(r'^inferd_requests_total\{code="(\d+)",model="tiny"(?:,[^}]*)?\} (\S+)$', text, re.MULTILINE)
    return int(sum(float(count) for code, count in found if code != "200"))


# ---- perf_analyzer runs ---------------------------------------------------------------------


def run_perf_analyzer(
    binary: Path, env: dict[str, str], url: str, tensor_format: str, concurrency: int, seconds: float, workdir: Path
) -> Figures:
    data = workdir / "input.json"
    data.write_text(json.dumps({"data": [{"input": {"content": ROW, "shape": [16]}}]}))
    report = workdir / f"pa-{tensor_format}-{concurrency}.csv"
    command = [
        str(binary), "-m", "tiny", "-u", url.removeprefix("http://"), "-i", "http",
        "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", str(data),
        "--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format,
        "--measurement-mode", "time_windows", "--measurement-interval", str(int(seconds * 1000)),
        "--max-trials", "3", "--stability-percentage", "1000", "-f", str(report),
    ]  # fmt: skip
    before = non_200_answers(url)
    result = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    errors = non_200_answers(url) - before
    route = f"v2 {tensor_format}"
    if result.returncode != 0:
        last = (result.stdout + result.stderr).strip().splitlines()[-1:]
        return Figures(
            "perf_analyzer", route, concurrency, 0, 0, 0, errors, f"exit {result.returncode}: {' '.join(last)}"
        )
    row = next(csv.DictReader(report.open()))
    return Figures(
        "perf_analyzer", route, concurrency, float(row["Inferences/Second"]),
        float(row["p50 latency"]) / 1000, float(row["p99 latency"]) / 1000, errors,
    )  # fmt: skip


# ---- wrk on both routes --------------------------------------------------------------------


def bodies() -> dict[str, tuple[str, bytes]]:
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": ROW}]}
    return {
        "native": ("/models/tiny/predict", json.dumps({"inputs": [ROW]}).encode()),
        "v2 json": ("/v2/models/tiny/infer", json.dumps(v2).encode()),
    }


def run_wrk(url: str, route: str, concurrency: int, seconds: float) -> Figures:
    path, body = bodies()[route]
    loadgen.run_load(url + path, body, concurrency, 1.0)  # warm-up
    before = non_200_answers(url)
    load = loadgen.run_load(url + path, body, concurrency, seconds)
    errors = max(load.errors, non_200_answers(url) - before)
    return Figures(load.tool, route, concurrency, load.requests_per_s, load.p50_ms, load.p99_ms, errors)


# ---- report ---------------------------------------------------------------------------------


def table(rows: list[Figures]) -> str:
    lines = [f"{'client':<15}{'route':<10}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  note"]
    for r in rows:
        lines.append(
            f"{r.client:<15}{r.route:<10}{r.concurrency:>5}{r.throughput_rps:>10.0f}{r.p50_ms:>9.2f}"
            f"{r.p99_ms:>9.2f}{r.errors:>8}  {r.note}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement window")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--perf-venv", type=Path, default=Path(os.environ.get("PERF_VENV", "/work/venvs/perf")))
    args = parser.parse_args()
    binary, env = ensure_perf_analyzer(args.perf_venv)
    rows: list[Figures] = []
    workdir = Path(tempfile.mkdtemp(prefix="inferd-perf-"))
    try:
        with running_inferd(workdir) as url:
            for concurrency in args.concurrency:
                for tensor_format in ("json", "binary"):
                    rows.append(run_perf_analyzer(binary, env, url, tensor_format, concurrency, args.seconds, workdir))
                    print(table(rows[-1:]).splitlines()[1], flush=True)
                for route in ("native", "v2 json"):
                    rows.append(run_wrk(url, route, concurrency, 3 * args.seconds))
                    print(table(rows[-1:]).splitlines()[1], flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
