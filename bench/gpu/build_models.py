"""Build the GPU check's model files (run as a subprocess: the check's own process never imports
torch) and report what this machine's torch can do, as one JSON line on stdout.

    python3 bench/gpu/build_models.py --out DIR --set small     # tiny.pt, where.pt + machine facts
    python3 bench/gpu/build_models.py --out DIR --set resnet --image-size 224

The ResNet-50 is torchvision's architecture with random weights (seeded), behind a layer that takes
uint8 NCHW pixels and normalises them on the model's device, so a request carries 1 byte a pixel.
Where torchvision is missing (a CPU rehearsal), a small stand-in network of the same interface is
written instead and the JSON says so.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn


class Where(nn.Module):
    """Answers, per row, whether its input and its weight are on a CUDA device (1.0) or not."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flags = torch.tensor([float(x.is_cuda), float(self.weight.is_cuda)], device=x.device)
        return (x @ self.weight) * 0.0 + flags


class Normalised(nn.Module):
    """uint8 pixels in, the network's logits out; scaling happens on the network's device."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network((image.float() / 255.0 - self.mean) / self.std)


def stand_in_network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1000),
    )


def resnet50() -> tuple[nn.Module, str]:
    if importlib.util.find_spec("torchvision") is None:
        return stand_in_network(), "stand-in conv net (torchvision missing)"
    import torchvision

    return torchvision.models.resnet50(weights=None), f"torchvision {torchvision.__version__} resnet50"


def build_small(out: Path) -> dict[str, str]:
    torch.manual_seed(0)
    torch.jit.script(nn.Linear(16, 16).eval()).save(str(out / "tiny.pt"))
    torch.jit.script(Where().eval()).save(str(out / "where.pt"))
    return {"tiny": str(out / "tiny.pt"), "where": str(out / "where.pt")}


def build_resnet(out: Path, image_size: int) -> dict[str, object]:
    torch.manual_seed(0)
    network, description = resnet50()
    model = Normalised(network).eval()
    started = time.perf_counter()
    torch.jit.script(model).save(str(out / "resnet50.pt"))
    scripted_s = time.perf_counter() - started
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    started = time.perf_counter()
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out / "resnet50.pt2"))
    return {
        "torchscript": str(out / "resnet50.pt"),
        "export": str(out / "resnet50.pt2"),
        "network": description,
        "script_s": round(scripted_s, 1),
        "export_s": round(time.perf_counter() - started, 1),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, object]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "torchvision": _version("torchvision"),
        "transformers": _version("transformers"),
        "pillow": _version("pillow"),
        "cpus": len(os.sched_getaffinity(0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", choices=("small", "resnet"), required=True)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.set == "small":
        print(json.dumps({"machine": machine(), "files": build_small(args.out)}))
    else:
        print(json.dumps({"files": build_resnet(args.out, args.image_size)}))


if __name__ == "__main__":
    main()
