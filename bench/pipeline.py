"""The classify pipeline (decode -> EfficientNet-Lite0 -> top-5, each step on its own workers) vs
the same three stages in one handler, on the same cores: images/s at c=1, 8, 64, the pipeline's
overhead per step at c=1, and where each point's time went (batch size, compute and queue time of
each model, from /metrics).

    pip install -e ".[examples]" && python models/build_examples.py
    python bench/pipeline.py [--duration 5] [--warmup 10] [--rounds 3] [--cpus 0-3] [--device cuda] [--photo PATH]
    python bench/pipeline.py --overhead     # only the cost of a step: echo steps, then image tensors, c=1

A fair comparison on any number of cores (the default, --layout shared): both ways get the same
cores and the same number of network workers. On CPU the pipeline runs every step on every core,
as the single handler does: decode and the network one worker per core (one thread each), the
top-5 one worker over all of them; the OS interleaves a core's decode and network workers, and
the steps overlap across requests. The network's max_batch_size (--network-batch) is the same both
ways: on CPU a network's cost per image grows with its batch (EfficientNet-Lite0 on one core:
about 25 ms an image up to batch 4, 46 at 16, 71 at 32), so a larger cap on one side would decide
the result. With --device cuda the network (or the single handler) runs on the GPU, decode and
top-5 on the CPUs. --layout split gives each step cores of its own instead (decode the first
half, the network and top-5 the rest): the articles' layout, fair only where the network has a
device of its own; on CPU it leaves the network half the cores the single handler has.

Each point's rows are interleaved (pipeline, single, next point, ...; --rounds times; the summary
takes medians), so that a noisy moment on a shared machine hits both alike. The load generator is
an asyncio client in this process (raw HTTP/1.1 with keep-alive), pinned to no core: on a small
machine it competes with the servers, so compare rows of one run only. A point's figures come from
a window inside its load (after --warmup, the clients going on until it ends): at c=64 a request
takes over a second, and a count from the first request to the last answer would take in the
ramp-up and the drain, which cost a deeper pipeline more.

The overhead per step at c=1 is the mean request time less the steps' mean compute, over three
steps; it splits into each step's own (its time in the pipeline, submission to answer, less its
compute: the hop to its worker and back, queue and dispatch) and the route's (the request's time
less its steps': the body read from the client and the response).
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import ServerProcess, free_port  # noqa: E402
from inferd.cpuset import format_cpu_list, parse_cpu_list  # noqa: E402

MODELS = REPO / "models"
CONCURRENCIES = (1, 8, 64)
STEPS = ("decode", "effnet", "top5")


def pipeline_config(cpus: list[int], device: str, network_batch: int, layout: str = "shared") -> str:
    if layout == "split":
        half = max(1, len(cpus) // 2)
        decode, rest = cpus[:half], cpus[half:] or cpus[:half]
        network = f'device: {device}\n    cpu_affinity: "{format_cpu_list(rest)}"'
        return _pipeline_yaml(decode, network, rest[-1:], network_batch)
    cores = format_cpu_list(cpus)
    network = (
        f"device: {device}" if device != "cpu" else f'cpu_affinity: "{cores}"\n    workers_per_device: {len(cpus)}'
    )
    return _pipeline_yaml(cpus, network, cpus, network_batch)


def _pipeline_yaml(decode: list[int], network: str, top5: list[int], network_batch: int) -> str:
    """The classify pipeline: decode on `decode` (a worker per core), the network placed by
    `network` (YAML lines), top-5 on `top5`."""
    return f"""
models:
  - name: decode
    handler: {MODELS}/imagenet.py:DecodeImage
    cpu_affinity: "{format_cpu_list(decode)}"
    workers_per_device: {len(decode)}
    max_batch_size: 8
  - name: effnet
    path: {MODELS}/efficientnet_lite0.pt
    {network}
    max_batch_size: {network_batch}
    inputs: [{{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}}]
  - name: top5
    handler: {MODELS}/imagenet.py:TopClasses
    cpu_affinity: "{format_cpu_list(top5)}"
    max_batch_size: 64
  - {{name: classify, pipeline: [decode, effnet, top5], request_timeout_ms: 120000}}
"""


def single_config(cpus: list[int], device: str, network_batch: int) -> str:
    workers = 1 if device != "cpu" else len(cpus)
    return f"""
models:
  - name: classify
    handler: {MODELS}/imagenet.py:ClassifyInOne
    handler_args: {{network: {MODELS}/efficientnet_lite0.pt}}
    device: {device}
    cpu_affinity: "{format_cpu_list(cpus)}"
    workers_per_device: {workers}
    max_batch_size: {network_batch}
    request_timeout_ms: 120000
"""


async def _client(port: int, request: bytes, stop: asyncio.Event, finished: list[tuple[float, float, bool]]) -> None:
    """One closed-loop client: a request, its answer, the next, until `stop`; each answer as
    (when it came, its latency, whether it failed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            now = time.perf_counter()
            finished.append((now, now - started, not head.startswith(b"HTTP/1.1 200")))
    finally:
        writer.close()


def classify_request(photo: bytes) -> bytes:
    return (
        b"POST /models/classify/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(photo)}\r\n\r\n".encode()
        + photo
    )


@dataclass
class Window:
    """What one point measured over its window, the load running before and after it."""

    answered: int  # images answered inside the window
    seconds: float  # its length
    latency_s: float  # their mean latency
    failed: int
    cpu_s: float  # the server's CPU time
    before: str  # /metrics at the window's start and end
    after: str

    @property
    def rate(self) -> float:
        return self.answered / self.seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return self.cpu_s * 1000 / max(self.answered, 1)


async def load(port: int, photo: bytes, concurrency: int, warmup_s: float, duration_s: float, pid: int) -> Window:
    """`concurrency` closed-loop clients for `warmup_s` and then a window of `duration_s`, measured
    while the load goes on: the clients start together and take a while to reach a steady state
    (at c=64 a request takes seconds), and at the end they stop one by one, so counting from the
    first request to the last answer would take in that ramp and that drain."""
    finished: list[tuple[float, float, bool]] = []
    stop = asyncio.Event()
    request = classify_request(photo)
    clients = [asyncio.create_task(_client(port, request, stop, finished)) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        before, cpu_before_s = await asyncio.to_thread(_snapshot, port, pid)
        started = time.perf_counter()
        await asyncio.sleep(duration_s)
        ended = time.perf_counter()
        after, cpu_after_s = await asyncio.to_thread(_snapshot, port, pid)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    inside = [(latency_s, failed) for at, latency_s, failed in finished if started <= at < ended]
    return Window(
        answered=len(inside),
        seconds=ended - started,
        latency_s=sum(latency for latency, _ in inside) / max(len(inside), 1),
        failed=sum(failed for _, failed in inside),
        cpu_s=cpu_after_s - cpu_before_s,
        before=before,
        after=after,
    )


def _snapshot(port: int, pid: int) -> tuple[str, float]:
    return scrape(port), cpu_seconds(pid)


def scrape(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


@contextmanager
def served(name: str, config: str, folder: Path) -> Iterator[tuple[int, int]]:
    """A server of `config`, its port and pid, while the block runs."""
    port = free_port()
    path = folder / f"{name}.yaml"
    path.write_text(f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\n" + config)
    argv = [sys.executable, "-m", "inferd", "serve", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / f"{name}.log", env=env, cwd=REPO) as server:
        yield port, server.pid


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of a server: its main process and every worker."""
    import psutil

    total = 0.0
    main = psutil.Process(pid)
    for process in [main, *main.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(
    name: str, server: tuple[int, int], photo: bytes, concurrency: int, duration_s: float, warmup_s: float
) -> tuple[float, float]:
    """One point: its images/s, the server's CPU time per image (less swayed than images/s by other
    load on the machine), and where the time went in each model (from /metrics). The point's load
    runs `warmup_s` before its window: the batch-size cap learns each model's costs under it."""
    port, pid = server
    window = asyncio.run(load(port, photo, concurrency, warmup_s, duration_s, pid))
    cpu_ms = window.cpu_ms_per_image
    print(
        f"{name:>9}  c={concurrency:<3} {window.rate:8.1f} images/s  mean {window.latency_s * 1000:8.2f} ms  "
        f"CPU {cpu_ms:6.1f} ms/image  failed {window.failed}"
    )
    print_models(window.before, window.after)
    if concurrency == 1 and name == "pipeline":
        print_overhead(window.before, window.after)
    return window.rate, cpu_ms


def print_models(before: str, after: str) -> None:
    """Per model over the point: mean batch size, compute per batch, queue and worker wait."""
    for model in sorted(set(re.findall(r'^inferd_batch_size_count\{model="([^"]+)"', after, re.M))):
        if delta_count(before, after, "inferd_batch_size", model) == 0:
            continue  # a pipeline: its steps batch, not it
        batch = delta_mean(before, after, "inferd_batch_size", model)
        compute_ms = delta_mean(before, after, "inferd_inference_duration_seconds", model) * 1000
        queue_ms = delta_mean(before, after, "inferd_queue_duration_seconds", model) * 1000
        worker_ms = delta_mean(before, after, "inferd_worker_wait_seconds", model) * 1000
        cap = re.search(rf'^inferd_batch_size_cap\{{model="{re.escape(model)}"\}} (\S+)', after, re.M)
        print(
            f"           {model:>8}: batch {batch:5.1f} items (cap {float(cap[1]) if cap else float('nan'):g}), "
            f"compute {compute_ms:7.2f} ms per batch, queued {queue_ms:7.2f} ms ({worker_ms:7.2f} ms waiting for a worker)"
        )


def delta_mean(before: str, after: str, family: str, model: str) -> float:
    """A histogram's mean over the observations between two scrapes."""
    count = delta_count(before, after, family, model)
    return (_total(after, family, "sum", model) - _total(before, family, "sum", model)) / count if count else 0.0


def delta_count(before: str, after: str, family: str, model: str) -> float:
    return _total(after, family, "count", model) - _total(before, family, "count", model)


def _total(metrics: str, family: str, kind: str, model: str) -> float:
    # Summed over the labels after model (the request series' protocol).
    found = re.findall(rf'^{family}_{kind}{{model="{model}"(?:,[^}}]*)?}} (\S+)$', metrics, re.M)
    return sum(float(value) for value in found)


def print_overhead(before: str, after: str) -> None:
    """Over the c=1 run alone: each step's own overhead (its time in the pipeline, from submission
    to answer, less its compute in the worker: the hop there and back, queue and dispatch), and the
    route's (the request's time less its steps': the body read from the client, the response)."""
    request_s = delta_mean(before, after, "inferd_request_duration_seconds", "classify")
    compute_s = {step: delta_mean(before, after, "inferd_inference_duration_seconds", step) for step in STEPS}
    step_s = {step: _step_mean(before, after, step) for step in STEPS}
    per_step_ms = [(step_s[step] - compute_s[step]) * 1000 for step in STEPS]
    steps = ", ".join(f"{step} {ms:.3f} ms" for step, ms in zip(STEPS, per_step_ms))
    route_ms = (request_s - sum(step_s.values())) * 1000
    overhead_ms = (request_s - sum(compute_s.values())) / len(STEPS) * 1000
    print(
        f"           c=1 request {request_s * 1000:.2f} ms, compute {sum(compute_s.values()) * 1000:.2f} ms: "
        f"overhead per step {overhead_ms:.3f} ms, of which the steps' own {steps} and the route's {route_ms:.3f} ms"
    )


def _step_mean(before: str, after: str, step: str) -> float:
    def total(metrics: str, kind: str) -> float:
        pattern = rf'^inferd_pipeline_step_seconds_{kind}{{model="classify",step="{step}"}} (\S+)$'
        found = re.search(pattern, metrics, re.M)
        return float(found.group(1)) if found else 0.0

    count = total(after, "count") - total(before, "count")
    return (total(after, "sum") - total(before, "sum")) / count if count else 0.0


ECHO = """
import numpy as np

from inferd import Handler


class Echo(Handler):
    def predict(self, items):
        return items


class Image(Handler):
    def predict(self, items):
        return [np.zeros((3, 224, 224), np.float32) for _ in items]


class Shape(Handler):
    def predict(self, items):
        return [list(np.shape(item)) for item in items]
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
    (folder / "echo.py").write_text(ECHO)
    steps = "".join(f"  - {{name: e{i}, handler: {folder}/echo.py:Echo}}\n" for i in range(3))
    port = free_port()
    path = folder / "overhead.yaml"
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\nmodels:\n{steps}"
        "  - {name: one, pipeline: [e0]}\n  - {name: three, pipeline: [e0, e1, e2]}\n"
    )
    direct, one, three = _median_latencies_ms(path, port, ("e0", "one", "three"), rounds, requests, "overhead.log")
    print(f"c=1 median: one echo model {direct:.3f} ms, pipeline of 1 step {one:.3f} ms, of 3 steps {three:.3f} ms")
    print(
        f"executor's own cost {one - direct:.3f} ms; each further step {(three - one) / 2:.3f} ms (a hop to a worker)"
    )


def _median_latencies_ms(
    config: Path, port: int, models: tuple[str, ...], rounds: int, requests: int, log_name: str
) -> list[float]:
    """Serve `config` and time one request at a time to each model's route, the models in turns
    (so that a noisy moment hits every row alike): each one's median, in ms."""
    import httpx

    argv = [sys.executable, "-m", "inferd", "serve", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    latencies_s: dict[str, list[float]] = {name: [] for name in models}
    server = ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", config.parent / log_name, env=env, cwd=REPO)
    with server, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(rounds):
            for name, samples in latencies_s.items():
                for _ in range(requests):
                    started = time.perf_counter()
                    client.post(f"/models/{name}/predict", json={"inputs": "x"}).raise_for_status()
                    samples.append(time.perf_counter() - started)
    return [statistics.median(latencies_s[name]) * 1000 for name in models]


def image_overhead(folder: Path, rounds: int = 5, requests: int = 100) -> None:
    """The cost of a hop that carries a 3x224x224 FP32 tensor (worker -> main -> worker), as in the
    classify pipeline: median c=1 latency of [image, shape] against [image, identity, echo, shape],
    whose two extra steps add two such hops (into a tensor model, then out of it to a handler)."""
    import torch

    (folder / "echo.py").write_text(ECHO)
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(folder / "identity.pt"))
    port = free_port()
    path = folder / "image_overhead.yaml"
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\nmodels:\n"
        f"  - {{name: image, handler: {folder}/echo.py:Image}}\n"
        f"  - {{name: identity, path: {folder}/identity.pt, "
        "inputs: [{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}]}\n"
        f"  - {{name: echo, handler: {folder}/echo.py:Echo}}\n"
        f"  - {{name: shape, handler: {folder}/echo.py:Shape}}\n"
        "  - {name: short, pipeline: [image, shape]}\n  - {name: long, pipeline: [image, identity, echo, shape]}\n"
    )
    short, long = _median_latencies_ms(path, port, ("short", "long"), rounds, requests, "image.log")
    print(f"c=1 median: [image, shape] {short:.3f} ms, [image, identity, echo, shape] {long:.3f} ms")
    print(f"each hop with a 3x224x224 FP32 tensor {(long - short) / 2:.3f} ms (compute of identity and echo included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of each point's load before it is measured")
    parser.add_argument("--cpus", default=format_cpu_list(sorted(os.sched_getaffinity(0))))
    parser.add_argument("--device", default="cpu", help="where the network runs: cpu or cuda")
    parser.add_argument("--photo", type=Path, default=None, help="a PNG (default: scikit-image's chelsea.png)")
    parser.add_argument("--overhead", action="store_true", help="measure only the cost of a step")
    parser.add_argument("--layout", choices=("shared", "split"), default="shared", help="the pipeline's cores")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every point, interleaved (medians)")
    parser.add_argument("--network-batch", type=int, default=32, help="max_batch_size of the network, both ways")
    args = parser.parse_args()
    if args.overhead:
        executor_cost()
        with tempfile.TemporaryDirectory() as folder:
            overhead(Path(folder))
            image_overhead(Path(folder))
        return
    if not (MODELS / "efficientnet_lite0.pt").exists():
        sys.exit(
            "models/efficientnet_lite0.pt is missing: pip install -e '.[examples]'; python models/build_examples.py"
        )
    import skimage

    photo = (args.photo or Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    cpus = list(parse_cpu_list(args.cpus))
    print(
        f"cores {format_cpu_list(cpus)}, network on {args.device} (max_batch_size {args.network_batch}), "
        f"pipeline layout {args.layout}, {args.duration:g} s per point after {args.warmup:g} s of its load, "
        f"{args.rounds} round(s)"
    )
    configs = {
        "pipeline": pipeline_config(cpus, args.device, args.network_batch, args.layout),
        "single": single_config(cpus, args.device, args.network_batch),
    }
    rates: dict[tuple[str, int], list[float]] = {}
    cpu_per_image_ms: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder, ExitStack() as servers:
        running = {name: servers.enter_context(served(name, config, Path(folder))) for name, config in configs.items()}
        for port, pid in running.values():
            asyncio.run(load(port, photo, 1, min(args.duration, 1.0), 0.1, pid))  # warm every step
        for _ in range(args.rounds):  # interleaved, so that a noisy moment hits both alike
            for concurrency in CONCURRENCIES:
                for name, server in running.items():
                    rate, cpu_ms = measure(name, server, photo, concurrency, args.duration, args.warmup)
                    rates.setdefault((name, concurrency), []).append(rate)
                    cpu_per_image_ms.setdefault((name, concurrency), []).append(cpu_ms)
    print(f"load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    for concurrency in CONCURRENCIES:
        piped, single = (statistics.median(rates[name, concurrency]) for name in configs)
        piped_cpu, single_cpu = (statistics.median(cpu_per_image_ms[name, concurrency]) for name in configs)
        ratio = piped / single if single else float("nan")
        print(
            f"c={concurrency:<3} pipeline {piped:6.1f} / single handler {single:6.1f} images/s: {ratio:.2f}x; "
            f"CPU per image {piped_cpu:.1f} / {single_cpu:.1f} ms"
        )


if __name__ == "__main__":
    main()
