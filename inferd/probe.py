"""Checking one model in a child process: resolve its handler class, or (for `validate --load`)
start it as a worker starts and run its warmup, reporting each failure at the YAML path to change.

Protocol: the parent starts the child exactly as `serve` starts a worker (`process.start_worker`:
a fork of the forkserver that has torch imported) with a `Probe` and two file paths. The child
sends its output to the first, writes a JSON list of problems, each "models[i].field: ...", to
the second and exits 0. Problems cross as strings, never as exception objects. A child that
crashes, exits early or outruns its deadline is killed or reaped by the parent, which reports
it from the exit status and the last line the child wrote.

Why a child: it runs the user's code (a handler module's import, `setup`, a model's load and
warmup), whose side effects cannot be bounded in the checking process: it may hang, call
`sys.exit`, crash the interpreter or start threads. The child is time-bound, dies with its parent,
and keeps torch out of the process that runs `inferd validate`, as it is kept out of `serve`'s.
"""

from __future__ import annotations

import json
import os
import select
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd import logs
from inferd.channel import Channel
from inferd.config import ModelConfig, TensorSpec
from inferd.errors import StartupError
from inferd.handler import concurrency_problem, handler_problem, load_handler_class
from inferd.placement import pin_before_torch, set_torch_threads
from inferd.process import start_worker
from inferd.worker import WorkerSpec, exit_with_main_process, select_device

_WARMUP_FAILED = "warmup failed: "  # how runners.warm_up words its error


@dataclass(frozen=True)
class Probe:
    spec: WorkerSpec  # exactly what `serve` would give this model's first worker
    index: int  # the model's place in the YAML's `models` list
    load: bool  # False: only resolve the handler class


def run_probe(probe: Probe, timeout_s: float) -> list[str]:
    """The problems the child finds, or why it found none in time."""
    with tempfile.TemporaryDirectory(prefix="inferd-probe-") as folder:
        result, output = Path(folder) / "problems.json", Path(folder) / "output.log"
        output.touch()
        name = f"inferd-probe {probe.spec.model.name}"
        process, main_socket = start_worker(_child_main, (probe, str(result), str(output)), name)
        main_socket.close()  # the child reports through its result file, not the channel
        exited, _, _ = select.select([process.exited_fd], [], [], timeout_s)
        if not exited:
            process.kill()
            process.reap()
            what = "load and warm up" if probe.load else "import its handler"
            return [f"{_subject(probe)}: did not {what} within {timeout_s:g} s (more time: --timeout-s){_tail(output)}"]
        exit_code = process.reap()
        if result.exists():
            return list(json.loads(result.read_text()))
        ended = _exit_text(exit_code)
        return [f"{_subject(probe)}: the check process {ended} before it reported{_tail(output)}"]


def _exit_text(exit_code: int | None) -> str:
    if exit_code is None:
        return "ended"
    if exit_code < 0:
        return f"was killed by {signal.Signals(-exit_code).name}"
    return f"exited with status {exit_code}"


def _tail(output: Path) -> str:
    lines = [line for line in output.read_text(errors="replace").splitlines() if line.strip()]
    return f"; its last output: {lines[-1].strip()}" if lines else ""


def _subject(probe: Probe) -> str:
    """The YAML path a failure to start this model points at: its handler or its model file."""
    return f"models[{probe.index}].{'handler' if probe.spec.model.handler else 'path'}"


def _child_main(probe: Probe, result_path: str, output_path: str, channel: Channel) -> None:
    """The child's side: check, then write the problems."""
    exit_with_main_process(probe.spec.main_pid)
    with open(output_path, "wb") as output:  # the forkserver's stdout and stderr are the parent's
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
    logs.configure("warning", "text", f"probe {probe.spec.model.name}")
    try:
        problems = _problems(probe)
    except BaseException as error:  # anything the user's code raises, SystemExit included
        problems = [f"{_subject(probe)}: {_one_line(error)}"]
    Path(result_path).write_text(json.dumps(problems))


def _problems(probe: Probe) -> list[str]:
    if probe.load:
        return _load_problems(probe)  # which resolves the handler class where the worker does
    problem = handler_problem(probe.spec.model.handler, probe.spec.base_dir) if probe.spec.model.handler else None
    return [f"{_subject(probe)}: {problem}"] if problem else _concurrency_problems(probe)


def _concurrency_problems(probe: Probe) -> list[str]:
    """max_concurrency above 1 on a handler whose predict is a plain function."""
    model = probe.spec.model
    if model.handler is None or model.max_concurrency <= 1:
        return []
    try:
        problem = concurrency_problem(model, load_handler_class(model.handler, probe.spec.base_dir))
    except StartupError:
        return []  # the handler's own problem is reported at its path
    return [f"models[{probe.index}].max_concurrency: {problem}"] if problem else []


def _load_problems(probe: Probe) -> list[str]:
    """Pin, select the device, build the runner and warm it up: the worker's `_boot`, step by step,
    so that each step's failure is named at the YAML it comes from."""
    spec, where = probe.spec, f"models[{probe.index}]"
    pin_before_torch(spec.slot)
    import torch

    from inferd.runners import build_runner, warm_up

    try:
        set_torch_threads(spec.slot)
        select_device(spec.slot, torch)
    except Exception as error:
        return [f"{where}.device: cannot use {spec.slot.device}: {_one_line(error)}"]
    concurrency = _concurrency_problems(probe)
    if concurrency:
        return concurrency
    try:
        runner = build_runner(spec.model, spec.slot.device, spec.base_dir)
    except StartupError as error:  # the handler class or the model file, named as `validate` names it
        return [f"{_subject(probe)}: {error}"]
    except Exception as error:
        failed = "could not be set up" if spec.model.handler else "cannot be loaded"
        return [f"{_subject(probe)}: {failed} on {spec.slot.device}: {_one_line(error)}"]
    try:
        warm_up(runner, spec.model)
    except Exception as error:
        return _warmup_problems(runner, spec.model, where, error)
    return []


def _warmup_problems(runner: Any, model: ModelConfig, where: str, error: Exception) -> list[str]:
    """Point a failed warmup at what causes it: each explicit sample that fails on its own, else the
    declared inputs that the default warmup (zeros) was made from."""
    from inferd.runners import warm_up

    if not model.warmup:
        return [_declared_inputs_problem(runner, model, where, _one_line(error))]
    problems = []
    for index, sample in enumerate(model.warmup):
        try:
            warm_up(runner, model.model_copy(update={"warmup": (sample,), "warmup_runs": 1}))
        except Exception as sample_error:
            problems.append(f"{where}.warmup[{index}]: fails on the model: {_one_line(sample_error)}")
    return problems or [f"{where}.warmup: fails on the model: {_one_line(error)}"]


def _declared_inputs_problem(runner: Any, model: ModelConfig, where: str, failure: str) -> str:
    inputs = model.inputs or ()
    if not inputs:  # a torch.export program's own signature gave the shapes
        return f"{where}.path: fails on zeros of the input shapes it declares: {failure}"
    if len(inputs) > 1:
        shapes = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in inputs)
        return f"{where}.inputs: the declared shapes ({shapes}) do not fit the model: {failure}"
    spec = inputs[0]
    if spec.datatype != "FP32" and _fits_as_fp32(runner, spec):
        return f"{where}.inputs[0].datatype: {spec.datatype} does not fit the model (FP32 does): {failure}"
    return f"{where}.inputs[0].shape: {list(spec.shape)} does not fit the model: {failure}"


def _fits_as_fp32(runner: Any, spec: TensorSpec) -> bool:
    """Whether the model takes zeros of the declared shape as FP32: then the datatype is wrong."""
    import numpy as np

    from inferd.messages import RequestFailure

    (result,) = runner.run_batch([{spec.name: np.zeros((1, *spec.shape[1:]), np.float32)}])
    return not isinstance(result, RequestFailure)


def _one_line(error: BaseException) -> str:
    """An error as one line: a TorchScript error's last line names the failing operation; the
    interpreter's traceback above it means nothing to someone editing a YAML file."""
    text = str(error)
    if text.startswith(_WARMUP_FAILED):
        lines = [line.strip() for line in text.removeprefix(_WARMUP_FAILED).splitlines() if line.strip()]
        return lines[-1] if lines else type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__
