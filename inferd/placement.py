"""Which CPUs and which device each worker gets, computed from the config in one place.

`plan` runs in the main process and checks the config against the CPUs inferd may use (its affinity
mask, limited by a cgroup CPU quota) and the GPUs it can see. `pin_before_torch` and
`set_torch_threads` run inside a worker, before and after torch is imported.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from inferd.config import Config, ModelConfig
from inferd.cpuset import format_cpu_list
from inferd.errors import ConfigError
from inferd.versions import at_versions, served_models

log = logging.getLogger(__name__)

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Host:
    """The resources this process may use."""

    cpus: tuple[int, ...]
    cpu_count: int  # CPUs the machine has, to tell "does not exist" from "not ours"
    gpu_count: int

    @classmethod
    def detect(cls) -> Host:
        from inferd.gpu import visible_gpu_count

        return cls(usable_cpus(), os.cpu_count() or 1, visible_gpu_count())


@dataclass(frozen=True)
class WorkerSlot:
    """One worker's place: stable across restarts, so metrics and logs can name it."""

    model: str
    device: str  # "cpu" or "cuda:N"
    index: int  # the worker's number on its device
    cpus: tuple[int, ...]  # empty: not pinned
    threads: int
    gpu_memory_fraction: float | None = None

    @property
    def name(self) -> str:
        device = "cpu:0" if self.device == "cpu" else self.device
        return f"{device}/{self.index}"

    def describe(self) -> str:
        pinned = f"CPUs {format_cpu_list(self.cpus)}" if self.cpus else "unpinned"
        return f"{self.model} {self.name}: {pinned}, {self.threads} torch thread(s)"


def usable_cpus() -> tuple[int, ...]:
    """The affinity mask, cut to the cgroup CPU quota so a container's limit is respected."""
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    quota = cgroup_cpu_quota()
    if quota is not None and quota < len(cpus):
        return cpus[: max(1, quota)]
    return cpus


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs files), or None if unlimited."""
    try:
        quota_text, period_text = (root / "cpu.max").read_text().split()[:2]
        if quota_text == "max":
            return None
        return math.ceil(int(quota_text) / int(period_text))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else math.ceil(quota / period)
    except (OSError, ValueError):
        return None


def plan(config: Config, host: Host) -> list[WorkerSlot]:
    """Every worker's slot, or ConfigError naming each YAML path that cannot be placed."""
    problems = at_versions(lambda models: placement_problems(models, host), enumerate(config.models))
    if problems:
        raise ConfigError(config.source, problems)
    # Each version has workers of its own; a pipeline or a split has none: other models do the work.
    config = config.model_copy(
        update={"models": tuple(m for m in served_models(config.models) if m.pipeline is None and m.split is None)}
    )
    _warn_about_shared_sets(config)
    devices = {m.name: _devices(m, host) for m in config.models}
    slots = _explicit_slots(config, devices) + _automatic_slots(config, devices, host)
    order = {m.name: i for i, m in enumerate(config.models)}
    return sorted(slots, key=lambda s: (order[s.model], s.device, s.index))


def placement_problems(models: Iterable[tuple[int, ModelConfig]], host: Host) -> list[str]:
    """Every device and CPU set among `models` (by YAML index) that this machine cannot give."""
    problems: list[str] = []
    for index, model in models:
        problems += _device_problems(model, index, host)
        if model.cpu_affinity is not None:
            _check_cpus(model, index, host, len(_devices(model, host)), problems)
    return problems


def _devices(model: ModelConfig, host: Host) -> list[str]:
    if model.device == "cuda" and model.gpus is None:
        return [f"cuda:{gpu}" for gpu in range(host.gpu_count)]
    return list(model.device_names)


def _device_problems(model: ModelConfig, index: int, host: Host) -> list[str]:
    where = f"models[{index}]"
    have = f"this machine has {host.gpu_count} visible GPU(s)"
    if model.device == "cpu":
        return []
    if model.device == "cuda" and model.gpus is None:
        return [f"{where}.device: 'cuda' but no GPU is visible ({have})"] if host.gpu_count == 0 else []
    field = "gpus" if model.gpus is not None else "device"
    return [
        f"{where}.{field}: GPU {device} does not exist ({have})"
        for device in model.device_names
        if int(device.split(":")[1]) >= host.gpu_count
    ]


def _check_cpus(model: ModelConfig, index: int, host: Host, devices: int, problems: list[str]) -> None:
    where = f"models[{index}].cpu_affinity"
    cpus = model.cpu_affinity or ()
    for cpu in cpus:
        if cpu >= host.cpu_count:
            problems.append(f"{where}: CPU {cpu} does not exist (this machine has 0-{host.cpu_count - 1})")
        elif cpu not in host.cpus:
            problems.append(f"{where}: CPU {cpu} is not available to inferd (it may use {format_cpu_list(host.cpus)})")
    workers = devices * model.workers_per_device
    if workers and len(cpus) % workers:
        problems.append(
            f"{where}: {len(cpus)} CPU(s) cannot be split equally among {workers} worker(s); "
            f"give a multiple of {workers} CPUs"
        )


def _warn_about_shared_sets(config: Config) -> None:
    owners: dict[int, list[str]] = {}
    for model in config.models:
        for cpu in model.cpu_affinity or ():
            owners.setdefault(cpu, []).append(model.name)
    shared = {cpu: names for cpu, names in owners.items() if len(names) > 1}
    if shared:
        cpus = format_cpu_list(shared)
        log.warning("CPUs %s are in the cpu_affinity of several models; their workers will compete", cpus)


def _explicit_slots(config: Config, devices: dict[str, list[str]]) -> list[WorkerSlot]:
    slots = []
    for model in config.models:
        if model.cpu_affinity is None:
            continue
        workers = [(d, i) for d in devices[model.name] for i in range(model.workers_per_device)]
        share = len(model.cpu_affinity) // len(workers)
        for n, (device, index) in enumerate(workers):
            cpus = model.cpu_affinity[n * share : (n + 1) * share]
            slots.append(WorkerSlot(model.name, device, index, cpus, share, model.gpu_memory_fraction))
    return slots


def _automatic_slots(config: Config, devices: dict[str, list[str]], host: Host) -> list[WorkerSlot]:
    """Split the CPUs no model claimed among the CPU workers without a set, never oversubscribing,
    and leave one for the main process where there are more CPUs than workers.

    GPU workers without a set stay unpinned with one thread: the GPU does their arithmetic.
    """
    claimed = {cpu for m in config.models for cpu in (m.cpu_affinity or ())}
    pool = [cpu for cpu in host.cpus if cpu not in claimed] or list(host.cpus)
    unset = [m for m in config.models if m.cpu_affinity is None]
    cpu_workers = [(m, i) for m in unset if m.device == "cpu" for i in range(m.workers_per_device)]
    if len(pool) > len(cpu_workers) >= 1:
        pool = pool[:-1]  # the main process parses HTTP and batches: keep a CPU no worker computes on
    slots = [
        WorkerSlot(m.name, d, i, (), 1, m.gpu_memory_fraction)
        for m in unset if m.device != "cpu" for d in devices[m.name] for i in range(m.workers_per_device)
    ]  # fmt: skip
    if len(cpu_workers) > len(pool):
        log.warning("%d CPU workers share %d CPU(s): each gets one thread", len(cpu_workers), len(pool))
    for n, (model, index) in enumerate(cpu_workers):
        cpus = _share(pool, n, len(cpu_workers))
        slots.append(WorkerSlot(model.name, "cpu", index, cpus, len(cpus)))
    return slots


def _share(pool: list[int], n: int, workers: int) -> tuple[int, ...]:
    """The n-th of `workers` near-equal contiguous shares of `pool` (round robin when too few)."""
    if workers > len(pool):
        return (pool[n % len(pool)],)
    base, extra = divmod(len(pool), workers)
    start = n * base + min(n, extra)
    return tuple(pool[start : start + base + (1 if n < extra else 0)])


def pin_before_torch(slot: WorkerSlot) -> None:
    """Inside a worker, before torch is imported: pin the process and cap every thread pool."""
    if slot.cpus:
        # Every thread, not just this one: imports before this point may have started thread pools.
        for thread_id in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread_id), slot.cpus)
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(slot.threads)


def set_torch_threads(slot: WorkerSlot) -> None:
    """Inside a worker, after torch is imported; re-pins if importing torch reset the affinity."""
    import torch

    torch.set_num_threads(slot.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process; the value stands
        pass
    if slot.cpus and set(os.sched_getaffinity(0)) != set(slot.cpus):
        log.warning("%s: affinity was reset on import; pinning again", slot.describe())
        os.sched_setaffinity(0, slot.cpus)
