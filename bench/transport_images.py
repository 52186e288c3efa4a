"""The image rows of bench/transport.py: a batch of 32 images (3x224x224 FP32, 18 MiB) into the
EfficientNet-Lite0 example (models/efficientnet_lite0.pt) through each transport, as rows/s from
the p50 of one request, over the network run in a process of its own with as many torch threads
as inferd's worker runs it with; each served request is followed by one such run, so drifting load
on a shared machine lands on both alike.

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
import sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
model = torch.jit.load(sys.argv[1]).eval()
images = torch.rand(int(sys.argv[3]), 3, 224, 224)
with torch.inference_mode():
    model(images)
    print("ready", flush=True)
    for line in sys.stdin:  # one batch per line, so its runs can alternate with the server's
        started = time.perf_counter()
        model(images)
        print(time.perf_counter() - started, flush=True)
"""


class InProcess:
    """The network in a process of its own, one batch each time it is asked."""

    def __init__(self, threads: int, images: int) -> None:
        argv = [sys.executable, "-c", IN_PROCESS, str(MODEL), str(threads), str(images)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def run_s(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)


def paired_p50_s(call: Callable[[], object], baseline: InProcess, requests: int) -> tuple[float, float]:
    """p50 of the served call and of the in-process run, each served request followed by one run."""
    call()  # warm the path (and check it answers)
    served, local = [], []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        served.append(time.perf_counter() - started)
        local.append(baseline.run_s())
    return statistics.median(served), statistics.median(local)


def served_rows(
    images: np.ndarray, requests: int, http_url: str, grpc_url: str, baseline: InProcess
) -> dict[str, tuple[float, float]]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    http = httpclient.InferenceServerClient(http_url, connection_timeout=300, network_timeout=300)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    region = shm.create_shared_memory_region("bench-images", "/inferd-bench-images", images.nbytes)
    shm.set_shared_memory_region(region, [images])
    times: dict[str, tuple[float, float]] = {}
    try:
        for name, client, module in (("HTTP binary", http, httpclient), ("gRPC", grpc, grpcclient)):
            raw = module.InferInput("image", list(images.shape), "FP32")
            kwargs = {"binary_data": True} if module is httpclient else {}
            raw.set_data_from_numpy(images, **kwargs)
            outputs = [module.InferRequestedOutput("logits", **kwargs)]
            times[name] = paired_p50_s(
                lambda c=client, i=raw, o=outputs: c.infer("effnet", [i], outputs=o), baseline, requests
            )
            client.register_system_shared_memory("bench-images", "/inferd-bench-images", images.nbytes)
            in_region = module.InferInput("image", list(images.shape), "FP32")
            in_region.set_shared_memory("bench-images", images.nbytes)
            shm_name = f"{name.split()[0]} + system shm"
            times[shm_name] = paired_p50_s(
                lambda c=client, i=in_region, o=outputs: c.infer("effnet", [i], outputs=o), baseline, requests
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
        baseline = InProcess(worker["threads"], count)
        try:
            served = served_rows(images, requests, f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", baseline)
        finally:
            baseline.close()
    print(f"\n{count} images (3x224x224 FP32, {images.nbytes / 2**20:.1f} MiB) into EfficientNet-Lite0, "
          f"{requests} sequential requests, worker with {worker['threads']} torch thread(s)")  # fmt: skip
    print(f"{'path':<20} {'p50 s':>7} {'rows/s':>7} {'in-process p50 s':>17} {'rows/s':>7} {'served/in-process':>18}")
    for name, (served_s, local_s) in served.items():
        share = local_s / served_s
        verdict = f">= {TARGET:g} {'met' if share >= TARGET else 'MISSED'}"
        print(
            f"{name:<20} {served_s:7.3f} {count / served_s:7.1f} {local_s:17.3f} {count / local_s:7.1f} "
            f"{share:17.2f}x {verdict}"
        )
