"""Build the example model files that configs/example.yaml serves (seeded: the same bytes each run).

    python models/build_examples.py [--out models/]

- classifier.pt: a small image classifier (3x32x32 in, 10 logits out) saved as TorchScript;
- classifier.pt2: the same network saved with torch.export, with a dynamic batch dimension;
- tiny.pt: Linear(16, 16), the smallest useful model, for latency and overhead measurements.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn


class SmallClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


def build(out: Path) -> list[Path]:
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    classifier = SmallClassifier().eval()
    torch.jit.script(classifier).save(str(out / "classifier.pt"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(classifier, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out / "classifier.pt2"))
    torch.jit.script(nn.Linear(16, 16).eval()).save(str(out / "tiny.pt"))
    return [out / name for name in ("classifier.pt", "classifier.pt2", "tiny.pt")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    for path in build(parser.parse_args().out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
