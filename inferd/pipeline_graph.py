"""A pipeline's steps as a graph: the order they run in and the config problems they have.

Pure functions over the config tree (no I/O, no asyncio), shared by config validation and the
executor (inferd/pipeline.py). A step names a model of the same config and the steps whose outputs
it takes (`after`); the last step listed answers the request, and every other step must feed some
step, so that no work is computed and thrown away.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferd.config import ModelConfig, PipelineStep, TensorSpec

PIPELINE_INPUT = "input"
# A pipeline has no workers of its own: these belong on its steps.
WORKER_FIELDS = (
    "path", "handler", "handler_args", "device", "gpus", "gpu_memory_fraction", "workers_per_device",
    "batch_timeout_ms", "batch_wait", "cpu_affinity", "inputs", "outputs", "warmup", "warmup_runs",
    "max_worker_memory_mb", "max_concurrency", "load", "idle_unload_s", "busy_poll_us",
)  # fmt: skip


def pipeline_entry_problems(entry: dict[Any, Any], where: str) -> list[str]:
    """A pipeline entry's keys that only a model with workers takes."""
    return [
        f"{where}.{key}: a pipeline has no workers of its own; set {key} on the model of each step"
        for key in WORKER_FIELDS
        if key in entry
    ]


def pipeline_problems(entries: list[Any], models: dict[int, ModelConfig]) -> list[str]:
    """Every pipeline's problems across entries: unknown or nested steps, links to no step,
    cycles, steps whose output is never used, outputs that do not fit the next step's inputs."""
    named = {m.name: m for m in models.values()}
    written = {e.get("name") for e in entries if isinstance(e, dict)}  # entries that failed are named elsewhere
    problems: list[str] = []
    for index, model in models.items():
        if model.pipeline is not None:
            problems += _problems_of(model.pipeline, f"models[{index}].pipeline", named, written)
    return problems


def _problems_of(
    steps: tuple[PipelineStep, ...], where: str, named: dict[str, ModelConfig], written: set[Any]
) -> list[str]:
    problems = _id_problems(steps, where) + _model_problems(steps, where, named, written)
    if problems or any(step.model not in named for step in steps):
        return problems  # links between steps mean little until every step is one model
    problems = _link_problems(steps, where)
    if problems:
        return problems
    try:
        run_order(steps)
    except ValueError as cycle:
        return [f"{where}: {cycle}; a step may only take outputs of steps that do not depend on it"]
    problems += _unused_problems(steps, where)
    return problems + _fit_problems(steps, where, named)


def _id_problems(steps: tuple[PipelineStep, ...], where: str) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for index, step in enumerate(steps):
        step_id = str(step.id)
        if step_id == PIPELINE_INPUT:
            problems.append(f"{where}[{index}].id: {PIPELINE_INPUT!r} names the request; give this step another id")
        elif step_id in first:
            problems.append(
                f"{where}[{index}].id: {step_id!r} is already the id of {where}[{first[step_id]}]; "
                "give this step an 'id' of its own"
            )
        first.setdefault(step_id, index)
    return problems


def _model_problems(
    steps: tuple[PipelineStep, ...], where: str, named: dict[str, ModelConfig], written: set[Any]
) -> list[str]:
    problems = []
    for index, step in enumerate(steps):
        target = named.get(step.model)
        if target is None and step.model not in written:
            problems.append(f"{where}[{index}]: no model named {step.model!r} in this config{_hint(step.model, named)}")
        elif target is not None and target.pipeline is not None:
            problems.append(f"{where}[{index}]: {step.model!r} is a pipeline; list its steps here instead")
    return problems


def _link_problems(steps: tuple[PipelineStep, ...], where: str) -> list[str]:
    ids = [str(step.id) for step in steps]
    problems = []
    for index, step in enumerate(steps):
        for name in step.after or ():
            if name != PIPELINE_INPUT and name not in ids:
                hint = _hint(name, [PIPELINE_INPUT, *ids])
                problems.append(f"{where}[{index}].after: {name!r} is not a step of this pipeline{hint}")
            elif name == step.id:
                problems.append(f"{where}[{index}].after: a step cannot take its own output")
    return problems


def _unused_problems(steps: tuple[PipelineStep, ...], where: str) -> list[str]:
    consumed = {name for step in steps for name in step.after or ()}
    return [
        f"{where}[{index}]: the output of step {step.id!r} is never used; the last step answers the request, "
        "so list this step in a later step's 'after' or remove it"
        for index, step in enumerate(steps[:-1])
        if step.id not in consumed
    ]


def run_order(steps: Iterable[PipelineStep]) -> list[PipelineStep]:
    """The steps so that each comes after every step it takes outputs from; ValueError on a cycle."""
    pending = {str(step.id): step for step in steps}
    done: list[PipelineStep] = []
    finished = {PIPELINE_INPUT}
    while pending:
        ready = [s for s in pending.values() if all(name in finished for name in s.after or ())]
        if not ready:
            raise ValueError(f"steps {sorted(pending)} form a cycle")
        for step in ready:
            done.append(pending.pop(str(step.id)))
            finished.add(str(step.id))
    return done


def _fit_problems(steps: tuple[PipelineStep, ...], where: str, named: dict[str, ModelConfig]) -> list[str]:
    """Where a tensor step declares its inputs and every step it takes from declares its outputs."""
    by_id = {str(step.id): step for step in steps}
    problems = []
    for index, step in enumerate(steps):
        consumer = named[step.model]
        sources = [by_id[name] for name in step.after or () if name != PIPELINE_INPUT]
        if consumer.handler is not None or not consumer.inputs or not sources:
            continue  # a handler takes whatever items come; undeclared inputs cannot be checked
        produced = [named[source.model].outputs for source in sources]
        if all(produced):
            given = [spec for specs in produced for spec in specs or ()]
            problems += _fit(consumer.inputs, given, f"{where}[{index}]", step.model)
    return problems


def _fit(wanted: tuple[TensorSpec, ...], given: list[TensorSpec], where: str, model: str) -> list[str]:
    if len(wanted) == 1 and len(given) == 1:
        pairs = [(wanted[0], given[0])]  # one to one: matched by position, whatever the names
    else:
        by_name = {spec.name: spec for spec in given}
        missing = [spec.name for spec in wanted if spec.name not in by_name]
        if missing:
            return [f"{where}: model {model!r} takes inputs {missing} that no step before it gives "
                    f"(they give {sorted(by_name)})"]  # fmt: skip
        pairs = [(spec, by_name[spec.name]) for spec in wanted]
    return [f"{where}: {problem}" for w, g in pairs if (problem := _mismatch(w, g, model))]


def _mismatch(wanted: TensorSpec, given: TensorSpec, model: str) -> str | None:
    if wanted.datatype != given.datatype:
        return f"model {model!r} takes {wanted.name!r} as {wanted.datatype}, but the step before gives {given.datatype}"
    fits = len(wanted.shape) == len(given.shape) and all(
        -1 in (w, g) or w == g for w, g in zip(wanted.shape, given.shape)
    )
    if not fits:
        return (
            f"model {model!r} takes {wanted.name!r} of shape {list(wanted.shape)}, but the step before gives "
            f"{list(given.shape)} (-1 = any)"
        )
    return None


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(known)}"
