"""The classify pipeline (decode -> EfficientNet-Lite0 -> top-5, each step on its own workers) vs
the same three stages in one handler, on the same cores: images/s at c=1, 8, 64, and the pipeline's
overhead per step at c=1 (its mean request time less its steps' mean compute, over three steps).

    pip install -e ".[examples]" && python models/build_examples.py
    python bench/pipeline.py [--duration 5] [--cpus 0-3] [--device cuda] [--photo PATH]
    python bench/pipeline.py --overhead     # only the cost of a step: echo steps, tiny items, c=1

The pipeline splits the cores: the first half decodes (one worker per core), the rest run the
network with the top-5 beside it. The single handler runs one worker per core, each doing all three
stages. With --device cuda the network (or the single handler) runs on the GPU, decode on the CPUs.
The load generator is an asyncio client in this process (raw HTTP/1.1 with keep-alive), pinned to
no core: on a small machine it competes with the servers, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import ServerProcess, free_port  # noqa: E402
from inferd.cpuset import format_cpu_list, parse_cpu_list  # noqa: E402

MODELS = REPO / "models"
CONCURRENCIES = (1, 8, 64)


def pipeline_config(cpus: list[int], device: str) -> str:
    half = max(1, len(cpus) // 2)
    decode, rest = cpus[:half], cpus[half:] or cpus[:half]
    return f"""
models:
  - name: decode
    handler: {MODELS}/imagenet.py:DecodeImage
    cpu_affinity: "{format_cpu_list(decode)}"
    workers_per_device: {len(decode)}
    max_batch_size: 8
  - name: effnet
    path: {MODELS}/efficientnet_lite0.pt
    device: {device}
    cpu_affinity: "{format_cpu_list(rest)}"
    max_batch_size: 32
    inputs: [{{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}}]
  - name: top5
    handler: {MODELS}/imagenet.py:TopClasses
    cpu_affinity: "{format_cpu_list(rest[-1:])}"
    max_batch_size: 64
  - {{name: classify, pipeline: [decode, effnet, top5], request_timeout_ms: 120000}}
"""


def single_config(cpus: list[int], device: str) -> str:
    workers = 1 if device != "cpu" else len(cpus)
    return f"""
models:
  - name: classify
    handler: {MODELS}/imagenet.py:ClassifyInOne
    handler_args: {{network: {MODELS}/efficientnet_lite0.pt}}
    device: {device}
    cpu_affinity: "{format_cpu_list(cpus)}"
    workers_per_device: {workers}
    max_batch_size: 32
    request_timeout_ms: 120000
"""


async def _client(port: int, request: bytes, stop_at: float, latencies_s: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    failed = 0
    try:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            failed += not head.startswith(b"HTTP/1.1 200")
            latencies_s.append(time.perf_counter() - started)
    finally:
        writer.close()
    return failed


async def load(port: int, photo: bytes, concurrency: int, duration_s: float) -> tuple[float, float, int]:
    """Images/s, mean latency (s) and failures of `concurrency` closed-loop clients."""
    request = (
        b"POST /models/classify/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(photo)}\r\n\r\n".encode()
        + photo
    )
    latencies_s: list[float] = []
    started = time.monotonic()
    failed = await asyncio.gather(
        *(_client(port, request, started + duration_s, latencies_s) for _ in range(concurrency))
    )
    elapsed_s = time.monotonic() - started
    return len(latencies_s) / elapsed_s, sum(latencies_s) / max(len(latencies_s), 1), sum(failed)


def scrape(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def run(name: str, config: str, photo: bytes, duration_s: float, folder: Path) -> dict[int, float]:
    port = free_port()
    path = folder / f"{name}.yaml"
    path.write_text(f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\n" + config)
    argv = [sys.executable, "-m", "inferd", "serve", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    figures: dict[int, float] = {}
    with ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / f"{name}.log", env=env, cwd=REPO):
        asyncio.run(load(port, photo, 1, min(duration_s, 1.0)))  # warm every step
        for concurrency in CONCURRENCIES:
            before = scrape(port)
            rate, latency_s, failed = asyncio.run(load(port, photo, concurrency, duration_s))
            figures[concurrency] = rate
            print(
                f"{name:>9}  c={concurrency:<3} {rate:8.1f} images/s  mean {latency_s * 1000:8.2f} ms  failed {failed}"
            )
            if concurrency == 1 and name == "pipeline":
                print_overhead(before, scrape(port))
    return figures


def print_overhead(before: str, after: str) -> None:
    """Mean request time less the steps' mean compute, per step, over the c=1 run alone."""

    def delta_mean(family: str, model: str) -> float:
        def total(metrics: str, kind: str) -> float:
            # Summed over the labels after model (the request series' protocol).
            found = re.findall(rf'^{family}_{kind}{{model="{model}"(?:,[^}}]*)?}} (\S+)$', metrics, re.M)
            return sum(float(value) for value in found)

        count = total(after, "count") - total(before, "count")
        return (total(after, "sum") - total(before, "sum")) / count if count else 0.0

    request_s = delta_mean("inferd_request_duration_seconds", "classify")
    compute_s = {step: delta_mean("inferd_inference_duration_seconds", step) for step in ("decode", "effnet", "top5")}
    overhead_ms = (request_s - sum(compute_s.values())) / len(compute_s) * 1000
    steps = ", ".join(f"{step} {seconds * 1000:.2f} ms" for step, seconds in compute_s.items())
    print(f"           c=1 request {request_s * 1000:.2f} ms; compute: {steps}; overhead per step {overhead_ms:.3f} ms")


ECHO = """
from inferd import Handler


class Echo(Handler):
    def predict(self, items):
        return items
"""


class _Echo:
    """A batcher that answers at once: what is left is the executor's own cost."""

    async def infer(self, payload: object, items: int, key: object, priority: int = 0) -> object:
        await asyncio.sleep(0)
        return payload


async def _executor_cost(steps: list[str], requests: int = 20_000) -> tuple[float, float]:
    from types import SimpleNamespace

    from inferd.config import ModelConfig
    from inferd.pipeline import PipelineExecutor

    stub = SimpleNamespace(is_handler=True, inputs=(), batcher=_Echo())
    executor = PipelineExecutor(ModelConfig(name="p", pipeline=steps), lambda name: stub)  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(requests):
        await executor.infer(["x"], 1, None)
    piped_s = (time.perf_counter() - started) / requests
    started = time.perf_counter()
    for _ in range(requests):
        for _ in steps:
            await stub.batcher.infer(["x"], 1, None)
    return piped_s, (time.perf_counter() - started) / requests


def executor_cost() -> None:
    """The executor alone, in this process, over batchers that answer at once."""
    for steps in (["a"], ["a", "b", "c"]):
        piped_s, direct_s = asyncio.run(_executor_cost(steps))
        per_step_us = (piped_s - direct_s) / len(steps) * 1e6
        print(f"executor alone, {len(steps)} step(s): {per_step_us:.1f} us per step per request")


def overhead(folder: Path, rounds: int = 5, requests: int = 200) -> None:
    """Median c=1 latency of one echo model, of pipelines of 1 and 3 echo steps: the executor's
    own cost is (pipeline of 1 - direct), each further step's (pipeline of 3 - pipeline of 1) / 2."""
    import httpx

    (folder / "echo.py").write_text(ECHO)
    steps = "".join(f"  - {{name: e{i}, handler: {folder}/echo.py:Echo}}\n" for i in range(3))
    port = free_port()
    path = folder / "overhead.yaml"
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\nmodels:\n{steps}"
        "  - {name: one, pipeline: [e0]}\n  - {name: three, pipeline: [e0, e1, e2]}\n"
    )
    argv = [sys.executable, "-m", "inferd", "serve", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    latencies_s: dict[str, list[float]] = {"e0": [], "one": [], "three": []}
    server = ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / "overhead.log", env=env, cwd=REPO)
    with server, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(rounds):  # interleaved, so that a noisy moment hits every row alike
            for name, samples in latencies_s.items():
                for _ in range(requests):
                    started = time.perf_counter()
                    client.post(f"/models/{name}/predict", json={"inputs": "x"}).raise_for_status()
                    samples.append(time.perf_counter() - started)
    direct, one, three = (statistics.median(latencies_s[name]) * 1000 for name in ("e0", "one", "three"))
    print(f"c=1 median: one echo model {direct:.3f} ms, pipeline of 1 step {one:.3f} ms, of 3 steps {three:.3f} ms")
    print(
        f"executor's own cost {one - direct:.3f} ms; each further step {(three - one) / 2:.3f} ms (a hop to a worker)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--cpus", default=format_cpu_list(sorted(os.sched_getaffinity(0))))
    parser.add_argument("--device", default="cpu", help="where the network runs: cpu or cuda")
    parser.add_argument("--photo", type=Path, default=None, help="a PNG (default: scikit-image's chelsea.png)")
    parser.add_argument("--overhead", action="store_true", help="measure only the cost of a step")
    args = parser.parse_args()
    if args.overhead:
        executor_cost()
        with tempfile.TemporaryDirectory() as folder:
            overhead(Path(folder))
        return
    if not (MODELS / "efficientnet_lite0.pt").exists():
        sys.exit(
            "models/efficientnet_lite0.pt is missing: pip install -e '.[examples]'; python models/build_examples.py"
        )
    import skimage

    photo = (args.photo or Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    cpus = list(parse_cpu_list(args.cpus))
    print(f"cores {format_cpu_list(cpus)}, network on {args.device}, {args.duration:g} s per point")
    with tempfile.TemporaryDirectory() as folder:
        piped = run("pipeline", pipeline_config(cpus, args.device), photo, args.duration, Path(folder))
        single = run("single", single_config(cpus, args.device), photo, args.duration, Path(folder))
    for concurrency in CONCURRENCIES:
        ratio = piped[concurrency] / single[concurrency] if single[concurrency] else float("nan")
        print(f"c={concurrency:<3} pipeline / single handler: {ratio:.2f}x")


if __name__ == "__main__":
    main()
