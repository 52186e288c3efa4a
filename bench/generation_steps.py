"""What one step of SmolLM2's continuous batch costs, in-process (no server): the prefill of k
prompts that join at once, the decode step of a running batch of n, and a first token under the
step orders the runner could use. It explains the time to first token under load: a newcomer's
first token waits for the prefill of everything that joined with it and for the running batch's
decode step. Prints figures; asserts nothing.

    python bench/generation_steps.py [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time, in a small village by the sea,"


def timed(run: Any, repeat: int) -> float:
    """Median milliseconds of `run()` over `repeat` runs (after one warm run)."""
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def sequences(handler: Any, count: int) -> list[Any]:
    from inferd.generation.sequence import Sequence
    from inferd.messages import Sampling

    prompt = handler.tokenize(PROMPT)
    return [Sequence(i, list(prompt), 64, Sampling(temperature=0)) for i in range(count)]


def running(handler: Any, count: int, made: int) -> list[Any]:
    """`count` sequences prefilled and `made` tokens into their decode."""
    batch = sequences(handler, count)
    for _ in range(made + 1):
        for sequence, token in zip(batch, handler.step(batch)):
            sequence.tokens.append(token)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(REPO / "models"))
    from smollm2 import SmolLM2

    torch.set_num_threads(args.threads)
    handler = SmolLM2()
    handler.setup("cpu")
    print(f"{args.threads} torch thread(s); prompt of {len(handler.tokenize(PROMPT))} tokens")
    for count in (1, 2, 4, 8):
        ms = timed(lambda count=count: prefill_and_release(handler, count), args.repeat)
        print(f"prefill of {count} joining prompt(s): {ms:7.1f} ms ({ms / count:6.1f} ms per prompt)")
    for count in (1, 8, 32):
        batch = running(handler, count, 8)
        ms = timed(lambda batch=batch: handler.step(batch), args.repeat)  # each run one token further
        print(f"decode step of {count:2} running sequence(s): {ms:7.1f} ms")
        for sequence in batch:
            handler.release(sequence)


def prefill_and_release(handler: Any, count: int) -> None:
    batch = sequences(handler, count)
    handler.step(batch)
    for sequence in batch:
        handler.release(sequence)


if __name__ == "__main__":
    main()
