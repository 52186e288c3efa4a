"""Generation benchmark: tokens/s and time to first token (p50, p99) at c=1, 8 and 32 with 64-token
outputs, for SmolLM2 with continuous batching (max_batch_size 32) and the same model with
max_batch_size 1, beside transformers' own `generate` called in-process (the c=1 reference).
Prints figures; asserts nothing.

    python bench/generation.py [--levels 1,8,32] [--rounds 2] [--threads 1] [--batch-sizes 32,1]

Each level sends `rounds` x c streamed /v1/completions requests, c at a time; tokens/s is every
generated token over the level's wall time. One worker per server, pinned by inferd's placement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
NEW_TOKENS = 64
PROMPT = "Once upon a time, in a small village by the sea,"


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


async def one_request(client: httpx.AsyncClient) -> tuple[float, int]:
    """(time to first token in s, tokens generated)."""
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


async def level(url: str, concurrency: int, rounds: int) -> dict[str, float]:
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


def serve(max_batch_size: int, threads: int, work: Path) -> ServerProcess:
    port = free_port()
    path = work / f"smollm2-{max_batch_size}.yaml"
    path.write_text(config(max_batch_size, threads))
    argv = [sys.executable, "-m", "inferd", "serve", str(path), "--port", str(port)]
    return ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", work / f"inferd-{max_batch_size}.log",
                         ready_deadline_s=300)  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="32,1", help="max_batch_size of each inferd run")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    print(f"transformers generate in-process, batch 1: {in_process_tokens_per_s(args.threads):.1f} tokens/s")
    with tempfile.TemporaryDirectory() as folder:
        for max_batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            with serve(max_batch_size, args.threads, Path(folder)) as server:
                url = server.ready_url.removesuffix("/readyz")
                for concurrency in levels:
                    figures = asyncio.run(level(url, concurrency, args.rounds))
                    print(f"inferd max_batch_size={max_batch_size:<2} c={concurrency:<2} "
                          f"{figures['tokens_per_s']:6.1f} tokens/s  TTFT p50 {figures['ttft_p50_s']:.2f} s "
                          f"p99 {figures['ttft_p99_s']:.2f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
