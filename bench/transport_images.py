"""The image rows of bench/transport.py: a batch of 32 images (3x224x224 FP32, 18 MiB) into the
EfficientNet-Lite0 example (models/efficientnet_lite0.pt) through each transport, as rows/s from
the p50 of one request, over the network called in a loop in one process with as many torch
threads as inferd's worker runs it with.

    python bench/transport.py            # runs these after the 4 MiB rows
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from procs import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "efficientnet_lite0.pt"
TARGET = 0.8  # of the in-process network's rows/s
IN_PROCESS = """
import statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
model = torch.jit.load(sys.argv[1]).eval()
images = torch.rand(int(sys.argv[3]), 3, 224, 224)
times = []
with torch.inference_mode():
    for number in range(int(sys.argv[4]) + 2):
        started = time.perf_counter()
        model(images)
        if number >= 2:
            times.append(time.perf_counter() - started)
print(statistics.median(times))
"""


def in_process_s(threads: int, images: int, requests: int) -> float:
    argv = [sys.executable, "-c", IN_PROCESS, str(MODEL), str(threads), str(images), str(requests)]
    return float(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def p50_s(call: Callable[[], object], requests: int) -> float:
    call()  # warm the path (and check it answers)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def served_rows(images: np.ndarray, requests: int, http_url: str, grpc_url: str) -> dict[str, float]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    http = httpclient.InferenceServerClient(http_url, connection_timeout=300, network_timeout=300)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    region = shm.create_shared_memory_region("bench-images", "/inferd-bench-images", images.nbytes)
    shm.set_shared_memory_region(region, [images])
    times: dict[str, float] = {}
    try:
        for name, client, module in (("HTTP binary", http, httpclient), ("gRPC", grpc, grpcclient)):
            raw = module.InferInput("image", list(images.shape), "FP32")
            kwargs = {"binary_data": True} if module is httpclient else {}
            raw.set_data_from_numpy(images, **kwargs)
            outputs = [module.InferRequestedOutput("logits", **kwargs)]
            times[name] = p50_s(lambda c=client, i=raw, o=outputs: c.infer("effnet", [i], outputs=o), requests)
            client.register_system_shared_memory("bench-images", "/inferd-bench-images", images.nbytes)
            in_region = module.InferInput("image", list(images.shape), "FP32")
            in_region.set_shared_memory("bench-images", images.nbytes)
            shm_name = f"{name.split()[0]} + system shm"
            times[shm_name] = p50_s(
                lambda c=client, i=in_region, o=outputs: c.infer("effnet", [i], outputs=o), requests
            )
            client.unregister_system_shared_memory("bench-images")
    finally:
        shm.destroy_shared_memory_region(region)
        http.close()
        grpc.close()
    return times


def image_rows(folder: Path, count: int, requests: int) -> None:
    port, grpc_port = free_port(), free_port()
    config = folder / "images.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, grpc_port: {grpc_port}, log_level: warning, "
        "max_request_bytes: 268435456}\n"
        f"models:\n  - {{name: effnet, path: {MODEL}, max_batch_size: {count}, request_timeout_ms: 300000, "
        "inputs: [{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}], "
        "outputs: [{name: logits, datatype: FP32, shape: [-1, 1000]}]}\n"
    )
    images = np.random.default_rng(1).random((count, 3, 224, 224), dtype=np.float32)
    argv = [sys.executable, "-m", "inferd", "serve", str(config)]
    with ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / "images.log"):
        worker = httpx.get(f"http://127.0.0.1:{port}/models").json()["models"][0]["workers"][0]
        served = served_rows(images, requests, f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    baseline_s = in_process_s(worker["threads"], count, requests)
    print(f"\n{count} images (3x224x224 FP32, {images.nbytes / 2**20:.1f} MiB) into EfficientNet-Lite0, "
          f"{requests} sequential requests, worker with {worker['threads']} torch thread(s)")  # fmt: skip
    print(f"{'path':<28} {'p50 s':>8} {'rows/s':>8} {'of in-process':>14}")
    print(f"{'in-process (torch.jit)':<28} {baseline_s:8.3f} {count / baseline_s:8.1f} {'1.00':>13}x")
    for name, seconds in served.items():
        share = baseline_s / seconds
        verdict = f">= {TARGET:g} {'met' if share >= TARGET else 'MISSED'}"
        print(f"{name:<28} {seconds:8.3f} {count / seconds:8.1f} {share:13.2f}x {verdict}")
