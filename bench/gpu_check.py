"""Every GPU promise of inferd checked against a real `inferd serve`, in one command.

    python3 bench/gpu_check.py                  # on a lent GPU machine: about 5 minutes
    python3 bench/gpu_check.py --rehearse       # without a GPU: the GPU checks' machinery on the CPU
    python3 bench/gpu_check.py --json out.json  # also written to $OUT/gpu_check.json when OUT is set

It installs the carried wheels (.whl/, from bench/gpu_wheels.sh) when the serving stack is missing,
builds its own models into a temporary folder (a tiny model, ResNet-50 with random weights as
TorchScript and torch.export, handler models), starts inferd on loopback ports, runs the checks of
bench/README.md's GPU section, prints one table (check, figure, expected, status) and writes it as
JSON. Each check has a time cap and the whole run a deadline (--deadline-s), so one hung check
cannot eat the rest. Without a GPU, the checks that need one say SKIPPED and why.
Exit status: 0 when no row failed or errored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from gpu import bootstrap  # noqa: E402  (stdlib only: it makes the rest importable)

Check = Callable[..., list]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="without a GPU, run the GPU checks on the CPU")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default $OUT/gpu_check.json)")
    parser.add_argument("--deadline-s", type=float, default=420.0, help="the whole run's budget (default 420)")
    parser.add_argument("--only", help="run only the checks whose numbers are listed, e.g. 1,6 (1 runs 1 and 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (models, configs, logs)")
    return parser.parse_args()


class Background:
    """A subprocess that builds model files while the first checks run; `result()` waits for it."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._files: dict[str, str] | None = None
        self._lock = threading.Lock()

    def result(self) -> dict[str, str]:
        with self._lock:
            if self._files is None:
                out, err = self.process.communicate(timeout=300)
                if self.process.returncode != 0:
                    raise RuntimeError(f"building the ResNet-50 files failed: {err[-800:]}")
                self._files = json.loads(out.strip().splitlines()[-1])["files"]
            return self._files


def build(scratch: Path, which: str, image_size: int) -> list[str]:
    return [
        sys.executable,
        str(BENCH / "gpu" / "build_models.py"),
        "--out",
        str(scratch / "models"),
        "--set",
        which,
        "--image-size",
        str(image_size),
    ]


def run_capped(check: Check, ctx: object, cap_s: float, specs: list[tuple[str, str, str]]) -> list:
    """Run one check in a thread; past its cap, stop its servers (which ends what it waits on) and
    report its rows as timed out."""
    from gpu.report import error

    outcome: list = []

    def target() -> None:
        try:
            outcome.extend(check(ctx))
        except Exception as problem:  # a check that breaks reports it on each of its rows
            outcome.extend(error(*spec, f"{type(problem).__name__}: {str(problem)[-800:]}") for spec in specs)

    thread = threading.Thread(target=target, name=check.__name__, daemon=True)
    thread.start()
    thread.join(cap_s)
    if thread.is_alive():
        ctx.stop_all()  # type: ignore[attr-defined]
        thread.join(15)
        return [error(*spec, f"timed out: the check passed its cap of {cap_s:.0f} s") for spec in specs]
    return outcome


def plan() -> list[tuple[Check, float, list[tuple[str, str, str]]]]:
    from gpu import example_checks, front_checks, model_checks, placement_checks

    return [
        (placement_checks.placement_and_memory, 120, placement_checks.ROWS_1_2),
        (model_checks.memory_fraction, 90, model_checks.ROWS_3),
        (placement_checks.worker_kill_and_fork, 90, placement_checks.ROWS_6_7),
        (model_checks.resnet_throughput, 160, model_checks.ROWS_4),
        (example_checks.example_models, 110, example_checks.ROWS_5),
        (front_checks.front_end_ceiling, 110, front_checks.ROWS_8),
    ]


def collect_logs(scratch: Path, out: Path) -> None:
    with tarfile.open(out / "gpu_check_logs.tar.gz", "w:gz") as archive:
        for path in sorted(scratch.glob("*.log")) + sorted(scratch.glob("*.yaml")):
            archive.add(path, arcname=path.name)


def main() -> int:
    args = parse_arguments()
    packages = bootstrap.ensure_dependencies()
    from gpu import nvsmi
    from gpu.context import Context
    from gpu.report import ERROR, FAIL, format_table, skipped, summary, write_json

    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="inferd-gpu-check-"))
    print(f"gpu_check: {packages}; scratch {scratch}", flush=True)
    built = subprocess.run(build(scratch, "small", 0), check=False, capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"gpu_check: building the models failed (is torch importable?):\n{built.stderr[-2000:]}")
    small = json.loads(built.stdout)
    machine = {**small["machine"], "nvidia_smi": nvsmi.describe()}
    ctx = Context(scratch, machine, small["files"], rehearse=args.rehearse and not machine["cuda_available"])
    mode = "gpu" if ctx.cuda else ("cpu rehearsal" if ctx.rehearse else "no gpu")
    print(f"gpu_check: mode {mode}; {json.dumps(machine)}", flush=True)
    if ctx.runs_gpu_checks:
        ctx.wait_for_resnet = Background(build(scratch, "resnet", 224 if ctx.cuda else 64)).result
    rows: list = []
    try:
        for check, cap_s, specs in plan():
            if args.only and not {spec[0].rstrip("abcd") for spec in specs} & set(args.only.split(",")):
                continue
            left_s = args.deadline_s - (time.monotonic() - started)
            if left_s < 20:
                rows += [skipped(*spec, "SKIPPED (the run's deadline came first)") for spec in specs]
                continue
            print(f"gpu_check: {check.__name__} (cap {min(cap_s, left_s):.0f} s)", flush=True)
            rows += run_capped(check, ctx, min(cap_s, left_s), specs)
    finally:
        ctx.stop_all()
    elapsed_s = time.monotonic() - started
    table = format_table(rows)
    counts = summary(rows)
    print(f"\ninferd GPU check ({mode}; {machine.get('gpu_name') or 'no GPU'}; {elapsed_s:.0f} s)\n{table}\n{counts}")
    if not ctx.cuda:
        print(
            "Not run on a GPU: every GPU row above is SKIPPED" + (" or a CPU rehearsal" if ctx.rehearse else "") + "."
        )
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    json_path = args.json or (out / "gpu_check.json" if out else None)
    if json_path is not None:
        write_json(json_path, rows, {**machine, "packages": packages}, elapsed_s, mode)
        print(f"gpu_check: wrote {json_path}")
    if out is not None:
        (out / "gpu_check.txt").write_text(table + "\n")
        collect_logs(scratch, out)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    sys.stdout.flush()
    os._exit(1 if counts[FAIL] or counts[ERROR] else 0)  # a timed-out check's thread must not hold the exit


if __name__ == "__main__":
    main()
