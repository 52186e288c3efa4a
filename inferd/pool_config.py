"""The model pool's settings: `server.pool` (budgets over every model) and the rules that join them
with the models' own `load` and `idle_unload_s`. Pure: no I/O; config.py calls these checks.

    server:
      pool:
        max_loaded_models: 4          # models with workers at once
        max_memory_mb: {cpu: 8192, "cuda:0": 30000}   # MiB their workers may hold, per device
    models:
      - {name: a, ..., load: lazy, idle_unload_s: 600}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from inferd.config import ModelConfig

_BUDGET_DEVICE = re.compile(r"^(cpu|cuda:\d+)$")


class PoolConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_loaded_models: int | None = Field(None, ge=1)
    # MiB per device ("cpu" is the host's memory, GPU workers' included): a model's share is what
    # its workers held when last measured (unique memory on the host, torch's reserve on a GPU).
    max_memory_mb: dict[str, int] = Field(default_factory=dict)

    @field_validator("max_memory_mb")
    @classmethod
    def _devices_named(cls, budgets: dict[str, int]) -> dict[str, int]:
        for device, mib in budgets.items():
            if not _BUDGET_DEVICE.match(device):
                raise ValueError(f"{device!r} is not a device: use 'cpu' or 'cuda:N' (one GPU each)")
            if not isinstance(mib, int) or mib < 1:
                raise ValueError(f"the budget of {device!r} must be a whole number of MiB, 1 or more")
        return budgets

    @property
    def max_bytes(self) -> dict[str, int]:
        return {device: mib * 2**20 for device, mib in self.max_memory_mb.items()}


def pool_entry_problems(entry: Mapping[Any, Any], where: str) -> list[str]:
    """One model entry's pool rules, read from the YAML as written."""
    if entry.get("idle_unload_s") is not None and entry.get("load", "eager") != "lazy":
        return [
            f"{where}.idle_unload_s: needs 'load: lazy' (an eager model unloaded when idle would not "
            "load again by itself)"
        ]
    return []


def pool_problems(pool: PoolConfig | None, models: Iterable[ModelConfig]) -> list[str]:
    """Budgets the config itself cannot keep: more eager models than max_loaded_models."""
    if pool is None or pool.max_loaded_models is None:
        return []
    eager = [m.name for m in models if m.pipeline is None and m.load == "eager"]
    if len(eager) <= pool.max_loaded_models:
        return []
    return [
        f"server.pool.max_loaded_models: {pool.max_loaded_models}, but {len(eager)} models load at start "
        f"(load: eager, the default): {eager}; raise it, or set 'load: lazy' on some of them"
    ]
