"""The two models every bench row serves, written as TorchScript files.

tiny: Linear(16, 16), the cheapest model there is, so a row measures serving overhead only.
mlp:  Linear(1024,1024)-ReLU x3, about 0.5 ms a row on one core, so batching matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchModel:
    name: str
    in_features: int


MODELS: dict[str, BenchModel] = {
    "tiny": BenchModel(name="tiny", in_features=16),
    "mlp": BenchModel(name="mlp", in_features=1024),
}


def build(
    name: str,
):  # -> torch.nn.Module; torch is imported lazily so the harness itself stays light
    import torch

    torch.manual_seed(0)
    if name == "tiny":
        module = torch.nn.Linear(16, 16)
    elif name == "mlp":
        module = torch.nn.Sequential(
            torch.nn.Linear(1024, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 1024),
        )
    else:
        raise ValueError(f"unknown bench model {name!r}; expected one of {sorted(MODELS)}")
    return module.eval()


def write(name: str, directory: Path) -> Path:
    """Script the model and save it as <directory>/<name>.pt; return the path."""
    import torch

    path = directory / f"{name}.pt"
    torch.jit.script(build(name)).save(str(path))
    return path


def write_all(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {name: write(name, directory) for name in MODELS}


def sample_row(name: str) -> list[float]:
    """A fixed, JSON-safe input row (no NaN/Inf), the same for every server."""
    width = MODELS[name].in_features
    return [round((i % 7) * 0.125 - 0.375, 3) for i in range(width)]
