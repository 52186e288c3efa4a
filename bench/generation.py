"""Generation benchmark: tokens/s and time to first token (p50, p99) at c=1, 8 and 32 with 64-token
outputs, for SmolLM2 with continuous batching (max_batch_size 32), the same model with
max_batch_size 1, and LitServe serving the same model with its streaming API (bench/
litserve_generate.py: stream=True, a predict that yields, LitServe's own batching of streams),
beside transformers' own `generate` called in-process (the c=1 reference). Prints figures and the
issue's targets at the end; asserts nothing.

    python bench/generation.py [--levels 1,8,32] [--rounds 2] [--threads 1] [--batch-sizes 32,1]
                               [--litserve-python PATH | --no-litserve]

Each level sends `rounds` x c streamed requests, c at a time; tokens/s is every generated token
over the level's wall time. One inference worker per server, pinned to the same CPUs (inferd by
its placement, LitServe's worker by itself). LitServe's python comes from --litserve-python,
$INFERD_BENCH_LITSERVE_PYTHON or /work/venvs/litserve/bin/python; transformers from this venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import site
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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


def in_process_tokens_per_s(threads: int) -> float:
    import torch

    sys.path.insert(0, str(REPO / "models"))
    from smollm2 import SmolLM2

    torch.set_num_threads(threads)
    handler = SmolLM2()
    handler.setup("cpu")
    ids = torch.tensor([handler.tokenize(PROMPT)])
    mask = torch.ones_like(ids)
    handler.model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)  # warm
    started = time.perf_counter()
    out = handler.model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - started)


def run_levels(name: str, server: ServerProcess, levels: list[int], rounds: int, one_request: OneRequest,
               figures: dict[tuple[str, int], dict[str, float]]) -> None:  # fmt: skip
    url = server.ready_url.rsplit("/", 1)[0]
    for concurrency in levels:
        found = figures[name, concurrency] = asyncio.run(level(url, concurrency, rounds, one_request))
        print(f"{name:<22} c={concurrency:<2} {found['tokens_per_s']:6.1f} tokens/s  TTFT p50 "
              f"{found['ttft_p50_s']:.2f} s p99 {found['ttft_p99_s']:.2f} s", flush=True)  # fmt: skip


def targets(figures: dict[tuple[str, int], dict[str, float]], in_process: float, levels: list[int]) -> None:
    """The issue's targets, for the figures this run has."""
    ours, low, top = "inferd batch 32", min(levels), max(levels)

    def ratio(label: str, a: tuple[str, int], b: tuple[str, int], key: str, goal: str) -> None:
        if a in figures and b in figures:
            print(f"  {label}: {figures[a][key] / figures[b][key]:.2f} ({goal})")

    print("targets:")
    ratio(f"tokens/s c={top} / c={low}", (ours, top), (ours, low), "tokens_per_s", ">= 4")
    ratio(f"tokens/s c={top} inferd / LitServe", (ours, top), ("litserve", top), "tokens_per_s", ">= 2")
    ratio(f"TTFT p50 c=8 / c={low}", (ours, 8), (ours, low), "ttft_p50_s", "< 3")
    if (ours, 1) in figures:
        print(f"  tokens/s c=1 / in-process generate: {figures[ours, 1]['tokens_per_s'] / in_process:.2f} (>= 0.90)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
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
    in_process = in_process_tokens_per_s(args.threads)
    print(f"transformers generate in-process, batch 1: {in_process:.1f} tokens/s")
    figures: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.logs or scratch
        Path(folder).mkdir(parents=True, exist_ok=True)
        for max_batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            with serve_inferd(max_batch_size, args.threads, Path(folder)) as server:
                run_levels(f"inferd batch {max_batch_size}", server, levels, args.rounds, inferd_request, figures)
        if litserve is None:
            print("LitServe: skipped (no --litserve-python, $INFERD_BENCH_LITSERVE_PYTHON or /work/venvs/litserve)")
        else:
            with serve_litserve(str(litserve), args.threads, Path(folder)) as server:
                run_levels("litserve", server, levels, args.rounds, litserve_request, figures)
    targets(figures, in_process, levels)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
