"""`inferd validate`: every problem a config has on this machine, found in one pass, each at its
YAML path.

No check hides another: the schema is checked entry by entry (`config.check_config`); each model
entry that passes it then has its model file, its placement (CPUs and GPUs) and its handler class
checked; with `load`, each model that has no problem so far is started in a child process as a
worker would start it and warmed up (`probe.py`). Handler classes are resolved, and middleware
imported and built, in child processes too, so this process never runs a user's module.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from inferd.config import Config, ConfigCheck, ModelConfig, by_entry, check_config
from inferd.errors import ConfigError
from inferd.handler import model_file_problems
from inferd.middleware_probe import run_middleware_probe
from inferd.placement import Host, WorkerSlot, placement_problems, plan
from inferd.probe import Probe, run_probe
from inferd.versions import at_versions
from inferd.worker import WorkerSpec

LOAD_TIMEOUT_S = 300.0  # per model, to load and warm up: a large model on a busy machine takes minutes
IMPORT_TIMEOUT_S = 60.0  # per handler model, to import its module


def validate(path: str | Path, machine: bool = True, load: bool = False, timeout_s: float | None = None) -> Config:
    """The config, or ConfigError with every problem: the schema's; with `machine`, also each model's
    file, placement and handler; with `load`, also what loading and warming up each model finds.
    `timeout_s` bounds each model's check (default: LOAD_TIMEOUT_S or IMPORT_TIMEOUT_S)."""
    timeout_s = timeout_s or (LOAD_TIMEOUT_S if load else IMPORT_TIMEOUT_S)
    check = check_config(path)
    problems = list(check.problems)
    if machine or load:
        problems += _machine_problems(check, Host.detect(), load, timeout_s)
        problems += _middleware_problems(check, timeout_s)
    if problems or check.config is None:
        raise ConfigError(check.source, by_entry(problems))
    return check.config


def _machine_problems(check: ConfigCheck, host: Host, load: bool, timeout_s: float) -> list[str]:
    """Each model's problems, a versioned model's version by version (each at its YAML path)."""
    versions = [(index, model) for index, model in check.models if model.versions]
    plain = dataclasses.replace(check, models=tuple((i, m) for i, m in check.models if not m.versions))
    problems = _plain_machine_problems(plain, host, load, timeout_s)
    for index, model in versions:
        one = functools.partial(_version_problems, check, host, load, timeout_s)
        problems += at_versions(one, [(index, model)])
    return problems


def _version_problems(
    check: ConfigCheck, host: Host, load: bool, timeout_s: float, models: list[tuple[int, ModelConfig]]
) -> list[str]:
    return _plain_machine_problems(dataclasses.replace(check, models=tuple(models)), host, load, timeout_s)


def _plain_machine_problems(check: ConfigCheck, host: Host, load: bool, timeout_s: float) -> list[str]:
    file_found = {index: model_file_problems([(index, model)]) for index, model in check.models}
    placed_found = {index: placement_problems([(index, model)], host) for index, model in check.models}
    found = {index: file_found[index] + placed_found[index] for index, _ in check.models}
    # A model that cannot be placed cannot be loaded as a worker would, but its handler class can
    # still be resolved: a CPU set's problem must not hide the handler's.
    present = [
        (index, model)
        for index, model in check.models
        if not file_found[index] and model.pipeline is None and model.split is None
    ]
    loadable = [(index, model) for index, model in present if not placed_found[index]] if load else []
    resolvable = [(index, model) for index, model in present if (index, model) not in loadable]
    probes = _probes(check, loadable, host, load=True) + _probes(check, resolvable, host, load=False)
    for probe in probes:
        found[probe.index] += run_probe(probe, timeout_s)
    return [problem for index, _ in check.models for problem in found[index]]


def _middleware_problems(check: ConfigCheck, timeout_s: float) -> list[str]:
    server = check.config.server.middleware if check.config is not None else ()
    return run_middleware_probe(server, list(check.models), Path(check.source).resolve().parent, timeout_s)


def _probes(check: ConfigCheck, models: list[tuple[int, ModelConfig]], host: Host, load: bool) -> list[Probe]:
    """A probe per model to load, or per handler model when only resolving handler classes."""
    base_dir = Path(check.source).resolve().parent
    if not load:
        return [
            Probe(WorkerSpec(WorkerSlot(model.name, "cpu", 0, (), 1), model, base_dir, "warning"), index, load=False)
            for index, model in models
            if model.handler is not None
        ]
    slots = _first_slots(check, models, host)
    return [
        Probe(WorkerSpec(slots[model.name], model, base_dir, "warning"), index, load=True) for index, model in models
    ]


def _first_slots(check: ConfigCheck, models: list[tuple[int, ModelConfig]], host: Host) -> dict[str, WorkerSlot]:
    """Each model's first worker slot, as `serve` would plan it among these models."""
    if not models:
        return {}
    config = Config(models=tuple(model for _, model in models), source=check.source)
    slots: dict[str, WorkerSlot] = {}
    for slot in plan(config, host):
        slots.setdefault(slot.model, slot)
    return slots
