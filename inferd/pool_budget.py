"""Which loaded models to unload so that one more fits the pool's budgets: a pure function over
figures (no processes, no asyncio), so every rule is testable on its own.

Rules:
- the budgets are `max_loaded_models` and bytes per device; a model counts once whatever its
  workers, and its share of a device is its measured footprint there (unknown before its first
  load: nothing);
- only idle lazy models may go (an eager one would not come back by itself; one with work queued
  or running would lose it), least recently used first, and only those that free what is short;
- a model that cannot fit even alone, or that fits only by unloading what may not go, is refused
  (`PoolFull`, naming the budget and what holds it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from inferd.errors import ModelUnavailable

MIB = 2**20


class PoolFull(ModelUnavailable):
    """Loading a model would pass a budget and nothing that may be unloaded frees enough."""


@dataclass(frozen=True)
class Budget:
    max_models: int | None = None
    max_bytes: Mapping[str, int] = field(default_factory=dict)  # by device


@dataclass(frozen=True)
class Resident:
    """A model that holds (or is about to hold) workers."""

    name: str
    footprint: Mapping[str, int]  # bytes by device
    last_used_s: float  # monotonic time of its last request
    kept_because: str | None = None  # why it may not be unloaded; None: it may


def plan_evictions(budget: Budget, resident: list[Resident], wanted: str, footprint: Mapping[str, int]) -> list[str]:
    """The models to unload, in order, so that `wanted` (of `footprint`) fits; PoolFull if none do."""
    _check_fits_alone(budget, wanted, footprint)
    kept = list(resident)
    candidates = sorted((r for r in resident if r.kept_because is None), key=lambda r: r.last_used_s)
    evicted: list[str] = []
    while short := _shortfall(budget, kept, footprint):
        victim = next((r for r in candidates if _frees(r, short)), None)
        if victim is None:
            raise PoolFull(_refusal(wanted, short, budget, kept))
        candidates.remove(victim)
        kept.remove(victim)
        evicted.append(victim.name)
    return evicted


def _check_fits_alone(budget: Budget, wanted: str, footprint: Mapping[str, int]) -> None:
    for device, limit in budget.max_bytes.items():
        if footprint.get(device, 0) > limit:
            raise PoolFull(
                f"model {wanted!r} holds {_mib(footprint[device])} MiB on {device}, more than the whole "
                f"server.pool.max_memory_mb.{device} ({_mib(limit)} MiB)"
            )


def _shortfall(budget: Budget, kept: list[Resident], footprint: Mapping[str, int]) -> set[str]:
    """What is over budget with `kept` and the new model: 'models' and/or device names."""
    short = set()
    if budget.max_models is not None and len(kept) + 1 > budget.max_models:
        short.add("models")
    for device, limit in budget.max_bytes.items():
        if sum(r.footprint.get(device, 0) for r in kept) + footprint.get(device, 0) > limit:
            short.add(device)
    return short


def _frees(resident: Resident, short: set[str]) -> bool:
    return "models" in short or any(resident.footprint.get(device, 0) > 0 for device in short)


def _refusal(wanted: str, short: set[str], budget: Budget, kept: list[Resident]) -> str:
    if "models" in short:
        limit = f"server.pool.max_loaded_models ({budget.max_models}) models are loaded"
    else:
        device = sorted(short)[0]
        held = sum(r.footprint.get(device, 0) for r in kept)
        limit = (
            f"the loaded models hold {_mib(held)} MiB on {device} "
            f"(server.pool.max_memory_mb.{device}: {_mib(budget.max_bytes[device])})"
        )
    held_by = "; ".join(f"{r.name!r} {r.kept_because or 'frees nothing there'}" for r in kept) or "none"
    return f"cannot load model {wanted!r}: {limit} and none of them can be unloaded ({held_by}); retry later"


def _mib(size_bytes: int) -> int:
    return -(-size_bytes // MIB)  # rounded up: a budget is never shown as met when it is passed
