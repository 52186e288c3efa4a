"""Generation benchmark: tokens/s and time to first token (p50, p99) at c=1, 8 and 32 with 64-token
outputs, for SmolLM2 with continuous batching (max_batch_size 32), the same model with
max_batch_size 1, and LitServe serving the same model with its streaming API (bench/
litserve_generate.py: stream=True, a predict that yields, LitServe's own batching of streams),
beside transformers' own `generate` called in-process (the c=1 reference). Prints figures and the
issue's targets at the end; asserts nothing.

    python bench/generation.py [--levels 1,8,32] [--rounds 2] [--repeats 1] [--threads 1]
                               [--batch-sizes 32,1] [--litserve-python PATH | --no-litserve]

Each level sends `rounds` x c streamed requests, c at a time; tokens/s is every generated token
over the level's wall time. One inference worker per server, pinned to the same CPUs (inferd by
its placement, LitServe's worker by itself), and the in-process reference runs on those CPUs too.
Every server runs from the start; each is paused (SIGSTOP) while another is measured, and the
servers take their turns level by level (the reference just before c=1), `repeats` times, the
order turning each time: the targets come from the medians. LitServe's python comes from
--litserve-python, $INFERD_BENCH_LITSERVE_PYTHON or /work/venvs/litserve/bin/python; transformers
from this venv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import site
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
NEW_TOKENS = 64
PROMPT = "Once upon a time, in a small village by the sea,"
LITSERVE_DEFAULT = Path("/work/venvs/litserve/bin/python")
OneRequest = Callable[[httpx.AsyncClient], Awaitable[tuple[float, int]]]


def config(max_batch_size: int, threads: int) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0, log_level: warning}}
models:
  - name: smollm2
    handler: {REPO}/models/smollm2.py:SmolLM2
    max_batch_size: {max_batch_size}
    max_queue_size: 1024
    cpu_affinity: {list(range(threads))}
    request_timeout_ms: 600000
    generation: {{max_tokens: {NEW_TOKENS}, default_max_tokens: {NEW_TOKENS}}}
"""


async def inferd_request(client: httpx.AsyncClient) -> tuple[float, int]:
    """(time to first token in s, tokens generated) of one streamed /v1/completions."""
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            if first is None and event["choices"] and event["choices"][0]["text"]:
                first = time.perf_counter() - started
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return first or 0.0, tokens


async def litserve_request(client: httpx.AsyncClient) -> tuple[float, int]:
    """The same of one LitServe stream: a JSON line per step, {"text": ..., "tokens": 0 or 1}."""
    started, first, tokens = time.perf_counter(), None, 0
    body = {"prompt": PROMPT, "max_tokens": NEW_TOKENS}
    async with client.stream("POST", "/generate", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if first is None and event["text"]:
                first = time.perf_counter() - started
            tokens += event["tokens"]
    return first or 0.0, tokens


async def level(url: str, concurrency: int, rounds: int, one_request: OneRequest) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        await one_request(client)  # warm
        started = time.perf_counter()
        results = []
        for _ in range(rounds):
            results += await asyncio.gather(*(one_request(client) for _ in range(concurrency)))
        wall_s = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    return {
        "tokens_per_s": sum(r[1] for r in results) / wall_s,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
    }


def serve_inferd(max_batch_size: int, threads: int, work: Path) -> ServerProcess:
    port = free_port()
    path = work / f"smollm2-{max_batch_size}.yaml"
    path.write_text(config(max_batch_size, threads))
    argv = [sys.executable, "-m", "inferd", "serve", str(path), "--port", str(port)]
    return ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", work / f"inferd-{max_batch_size}.log",
                         ready_deadline_s=300)  # fmt: skip


def serve_litserve(python: str, threads: int, work: Path) -> ServerProcess:
    port = free_port()
    argv = [python, str(BENCH / "litserve_generate.py"), "--port", str(port), "--max-batch-size", "32",
            "--batch-timeout-ms", "10", "--threads", str(threads), "--cpus", f"0-{threads - 1}",
            "--site-packages", site.getsitepackages()[0]]  # fmt: skip
    return ServerProcess(argv, f"http://127.0.0.1:{port}/health", work / "litserve.log", ready_deadline_s=300)


class InProcess:
    """transformers' own `generate` at batch 1 in this process, the c=1 reference, run on the
    servers' worker CPUs (this process is pinned to them while it runs) so that it and they
    compete for the same CPUs."""

    def __init__(self, threads: int) -> None:
        import torch

        sys.path.insert(0, str(REPO / "models"))
        from smollm2 import SmolLM2

        torch.set_num_threads(threads)
        self.torch, self.cpus = torch, set(range(threads))
        self.handler = SmolLM2()
        self.handler.setup("cpu")
        self.ids = torch.tensor([self.handler.tokenize(PROMPT)])

    def tokens_per_s(self) -> float:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.cpus)
        try:
            self._generate(8)  # warm
            started = time.perf_counter()
            made = self._generate(NEW_TOKENS)
            return made / (time.perf_counter() - started)
        finally:
            os.sched_setaffinity(0, allowed)

    def _generate(self, new_tokens: int) -> int:
        mask = self.torch.ones_like(self.ids)
        out = self.handler.model.generate(self.ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
        return int(out.shape[1] - self.ids.shape[1])


@dataclass
class Target:
    name: str
    server: ServerProcess
    one_request: OneRequest

    @property
    def url(self) -> str:
        return self.server.ready_url.rsplit("/", 1)[0]


Figures = dict[tuple[str, int], list[dict[str, float]]]  # every repeat's figures of a target at a level
IN_PROCESS = "generate in-process"


def measure(target: Target, concurrency: int, rounds: int, figures: Figures) -> None:
    """One level against one server, resumed for it and paused again after (an idle LitServe
    worker polls its queue: paused, it takes no CPU from the others)."""
    target.server.resume()
    try:
        found = asyncio.run(level(target.url, concurrency, rounds, target.one_request))
    finally:
        target.server.pause()
    figures.setdefault((target.name, concurrency), []).append(found)
    print(f"{target.name:<22} c={concurrency:<2} {found['tokens_per_s']:6.1f} tokens/s  TTFT p50 "
          f"{found['ttft_p50_s']:.2f} s p99 {found['ttft_p99_s']:.2f} s   (load {os.getloadavg()[0]:.1f})",
          flush=True)  # fmt: skip


def measure_reference(reference: InProcess, figures: Figures) -> None:
    tokens_per_s = reference.tokens_per_s()
    figures.setdefault((IN_PROCESS, 1), []).append({"tokens_per_s": tokens_per_s})
    print(f"{IN_PROCESS:<22} c=1  {tokens_per_s:6.1f} tokens/s", flush=True)


def run(targets: list[Target], reference: InProcess, levels: list[int], rounds: int, repeats: int) -> Figures:
    """Every level of every target, target after target within a level (the reference just
    before the c=1 servers); the order of the targets turns with each repeat, so drift in the
    machine's load lands on all of them alike."""
    figures: Figures = {}
    for target in targets:
        target.server.pause()
    for repeat in range(repeats):
        turn = targets[repeat % len(targets) :] + targets[: repeat % len(targets)]
        for concurrency in levels:
            if concurrency == 1:
                measure_reference(reference, figures)
            for target in turn:
                measure(target, concurrency, rounds, figures)
    return figures


def median(figures: Figures, key: tuple[str, int], field: str) -> float | None:
    found = [f[field] for f in figures.get(key, [])]
    return statistics.median(found) if found else None


def summary(figures: Figures) -> None:
    """The median of the repeats, with their range where there were several."""
    print("medians:")
    for (name, concurrency), found in figures.items():
        line = f"  {name:<22} c={concurrency:<2}"
        for field, unit in (("tokens_per_s", "tokens/s"), ("ttft_p50_s", "s TTFT p50")):
            values = sorted(f[field] for f in found if field in f)
            if values:
                spread = f" ({values[0]:.2f}..{values[-1]:.2f})" if len(values) > 1 else ""
                line += f"  {statistics.median(values):6.2f}{spread} {unit}"
        print(line)


def targets(figures: Figures, levels: list[int]) -> None:
    """The issue's targets, from the medians this run has."""
    ours, low, top = "inferd batch 32", min(levels), max(levels)

    def ratio(label: str, a: tuple[str, int], b: tuple[str, int], field: str, goal: str) -> None:
        over, under = median(figures, a, field), median(figures, b, field)
        if over is not None and under:
            print(f"  {label}: {over / under:.2f} ({goal})")

    print("targets:")
    ratio(f"tokens/s c={top} / c={low}", (ours, top), (ours, low), "tokens_per_s", ">= 4")
    ratio(f"tokens/s c={top} inferd / LitServe", (ours, top), ("litserve", top), "tokens_per_s", ">= 2")
    ratio(f"TTFT p50 c=8 / c={low}", (ours, 8), (ours, low), "ttft_p50_s", "< 3")
    ratio("tokens/s c=1 / in-process generate", (ours, 1), (IN_PROCESS, 1), "tokens_per_s", ">= 0.90")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="passes over every level and server, interleaved")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="32,1", help="max_batch_size of each inferd run")
    parser.add_argument("--litserve-python", default=os.environ.get("INFERD_BENCH_LITSERVE_PYTHON"))
    parser.add_argument("--no-litserve", action="store_true")
    parser.add_argument("--logs", help="a folder for the servers' configs and logs (default: a temporary one)")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    litserve = (
        None if args.no_litserve else args.litserve_python or (LITSERVE_DEFAULT if LITSERVE_DEFAULT.exists() else None)
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.threads} torch thread(s) per worker")
    reference = InProcess(args.threads)
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as servers:
        folder = Path(args.logs or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [
            Target(
                f"inferd batch {size}", servers.enter_context(serve_inferd(size, args.threads, folder)), inferd_request
            )
            for size in (int(b) for b in args.batch_sizes.split(","))
        ]
        if litserve is None:
            print("LitServe: skipped (no --litserve-python, $INFERD_BENCH_LITSERVE_PYTHON or /work/venvs/litserve)")
        else:
            server = servers.enter_context(serve_litserve(str(litserve), args.threads, folder))
            chosen.append(Target("litserve", server, litserve_request))
        figures = run(chosen, reference, levels, args.rounds, args.repeats)
    summary(figures)
    targets(figures, levels)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
