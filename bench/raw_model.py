"""Raw in-process model throughput: rows per second with no serving in the way.

    python bench/raw_model.py --model mlp --batch-size 32 --seconds 3

This is the ceiling any server can approach for a model: it calls the TorchScript module in a loop
under inference_mode on a fixed batch. Prints one line of figures (or JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import benchmodels


@dataclass(frozen=True)
class RawResult:
    model: str
    batch_size: int
    threads: int
    batches: int
    seconds: float
    rows_per_s: float
    ms_per_batch: float


def measure(
    model_path: Path, model_name: str, batch_size: int, seconds: float, threads: int | None = None
) -> RawResult:
    import torch

    if threads:
        torch.set_num_threads(threads)
    module = torch.jit.load(str(model_path)).eval()
    row = torch.tensor(benchmodels.sample_row(model_name), dtype=torch.float32)
    batch = row.repeat(batch_size, 1)
    with torch.inference_mode():
        for _ in range(20):  # let TorchScript profile and optimise before timing
            module(batch)
        batches = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            module(batch)
            batches += 1
        elapsed = time.perf_counter() - started
    return RawResult(
        model=model_name,
        batch_size=batch_size,
        threads=torch.get_num_threads(),
        batches=batches,
        seconds=round(elapsed, 3),
        rows_per_s=batches * batch_size / elapsed,
        ms_per_batch=1000 * elapsed / batches,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(benchmodels.MODELS), default="mlp")
    parser.add_argument("--model-path", type=Path, help="TorchScript file; built fresh if omitted")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="inferd-raw-") as scratch:
        path = args.model_path or benchmodels.write(args.model, Path(scratch))
        result = measure(path, args.model, args.batch_size, args.seconds, args.threads)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"raw {result.model} batch={result.batch_size} threads={result.threads}: "
            f"{result.rows_per_s:,.0f} rows/s ({result.ms_per_batch:.3f} ms/batch)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
