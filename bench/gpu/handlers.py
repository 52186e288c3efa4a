"""Handler models the GPU check serves through inferd. Each runs inside an inferd worker, so what it
reports was read in the worker, on the device inferd gave it.

- MemoryProbe: holds a buffer on its device; answers torch's allocated/reserved bytes read in predict.
- CopyCounter: runs inferd's own TensorRunner on a batch under torch's profiler and answers how
  many host-to-device and device-to-host copies the batch took.
- MemoryHog: needs more GPU memory at setup than its gpu_memory_fraction allows.
- MiniLMShaped: a BertModel of all-MiniLM-L6-v2's shape (random weights); tokenizing on the
  worker's CPUs, the network on its device; mean-pooled, normalised 384-number vectors out.
- ImageClassifier: each item a base64 zlib-compressed uint8 HxWx3 image; decoded, cropped and
  normalised on the worker's CPUs, classified by a network on its device.
This file is loaded by path (`handler: .../handlers.py:Class`): it imports nothing beside it.
"""

from __future__ import annotations

import base64
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferd import Handler

MIB = 1024 * 1024


def _memory(device: torch.device) -> dict[str, int | None]:
    if device.type != "cuda":
        return {"allocated": None, "reserved": None}
    return {"allocated": torch.cuda.memory_allocated(device), "reserved": torch.cuda.memory_reserved(device)}


class MemoryProbe(Handler):
    def setup(self, device: str) -> None:
        self.device = torch.device(device)
        self.held = torch.ones(int(self.handler_args.get("hold_mib", 64)) * MIB, dtype=torch.uint8, device=self.device)

    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        reading = {
            **_memory(self.device),
            "pid": os.getpid(),
            "device": str(self.device),
            "current_device": torch.cuda.current_device() if self.device.type == "cuda" else None,
            "held_on": str(self.held.device),
        }
        return [reading for _ in items]


class CopyCounter(Handler):
    """Items are rows of 16 numbers; each request's rows become one payload of inferd's TensorRunner,
    exactly as a path model's batch would."""

    def setup(self, device: str) -> None:
        from inferd.config import ModelConfig, TensorSpec
        from inferd.runners import TensorRunner

        config = ModelConfig(
            name="copies",
            path=Path(self.handler_args["model_path"]),
            device=device,
            inputs=(TensorSpec(name="input", datatype="FP32", shape=(-1, 16)),),
        )
        self.runner = TensorRunner(config, device)
        self.problem = ""
        try:
            self.count([np.zeros((1, 16), np.float32)])  # the profiler's first use is slow: not in a request
        except Exception as problem:  # reported in every answer: the models beside this one still serve
            self.problem = f"{type(problem).__name__}: {problem}"

    def decode(self, item: Any) -> np.ndarray:
        return np.asarray(item, dtype=np.float32).reshape(-1, 16)

    def predict(self, items: list[np.ndarray]) -> list[dict[str, Any]]:
        if self.problem:
            return [{"problem": self.problem} for _ in items]
        figures = self.count(items)
        return [{**figures, "payloads": len(items), "rows": sum(len(i) for i in items)} for _ in items]

    def count(self, arrays: list[np.ndarray]) -> dict[str, Any]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as profiled:
            self.runner.run_batch([{"input": array} for array in arrays])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        names = [event.name for event in profiled.events()]
        return {
            "h2d": sum("HtoD" in name for name in names),
            "d2h": sum("DtoH" in name for name in names),
            "to_device_calls": sum(name == "aten::to" for name in names),
            "cuda_events": sum(1 for event in profiled.events() if event.device_type.name == "CUDA"),
        }


class MemoryHog(Handler):
    def setup(self, device: str) -> None:
        self.device = torch.device(device)
        total = torch.cuda.get_device_properties(self.device).total_memory
        need = int(total * float(self.handler_args["need_fraction"]))
        self.weights = torch.empty(need, dtype=torch.uint8, device=self.device)

    def predict(self, items: list[Any]) -> list[int]:
        return [0 for _ in items]


class MiniLMShaped(Handler):
    def setup(self, device: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        self.device = torch.device(device)
        config = BertConfig(
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
            type_vocab_size=2,
            hidden_act="gelu",
        )
        self.model = BertModel(config).to(self.device).eval()
        self.tokenizer = _tokenizer(self.handler_args.get("tokenizer_dir"))

    def decode(self, item: Any) -> str:
        if not isinstance(item, str):
            raise ValueError(f"each input must be a string, not {type(item).__name__}")
        return item

    def predict(self, items: list[str]) -> np.ndarray:
        tokens = self.tokenizer(items)
        tokens = {name: tensor.to(self.device) for name, tensor in tokens.items()}
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()


def _tokenizer(directory: str | None) -> Any:
    """MiniLM's own tokenizer where its files travelled, else words hashed into the vocabulary."""
    if directory and Path(directory, "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        real = AutoTokenizer.from_pretrained(directory)
        return lambda texts: dict(real(texts, padding=True, truncation=True, max_length=256, return_tensors="pt"))

    def hashed(texts: list[str]) -> dict[str, torch.Tensor]:
        ids = [[101] + [1000 + zlib.crc32(w.encode()) % 29000 for w in t.lower().split()][:254] + [102] for t in texts]
        width = max(len(row) for row in ids)
        input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}

    return hashed


def encode_image(pixels: np.ndarray) -> str:
    """What a client of ImageClassifier sends for one HxWx3 uint8 image."""
    return base64.b64encode(zlib.compress(pixels.tobytes(), 1)).decode()


class ImageClassifier(Handler):
    def setup(self, device: str) -> None:
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.source = int(self.handler_args.get("source_size", 256))
        self.size = int(self.handler_args.get("size", 224))
        self.mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
        self.std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
        self.network, self.description = _image_network()
        self.network = self.network.to(self.device).eval()

    def decode(self, item: Any) -> np.ndarray:
        if not isinstance(item, str):
            raise ValueError("each input must be a base64 string of a zlib-compressed uint8 image")
        try:
            raw = zlib.decompress(base64.b64decode(item))
            pixels = np.frombuffer(raw, np.uint8).reshape(self.source, self.source, 3)
        except (ValueError, zlib.error) as problem:
            raise ValueError(f"not a {self.source}x{self.source}x3 uint8 image: {problem}") from None
        top = (self.source - self.size) // 2
        crop = pixels[top : top + self.size, top : top + self.size].transpose(2, 0, 1).astype(np.float32) / 255.0
        return (crop - self.mean) / self.std

    def predict(self, items: list[np.ndarray]) -> list[int]:
        batch = torch.from_numpy(np.stack(items)).to(self.device)
        with torch.inference_mode():
            return self.network(batch).argmax(dim=1).cpu().tolist()


def _image_network() -> tuple[torch.nn.Module, str]:
    try:
        import torchvision
    except ImportError:
        network = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 1000),
        )
        return network, "stand-in conv net"
    return torchvision.models.efficientnet_b0(weights=None), "efficientnet_b0"


class ImageDecode(Handler):
    """A pipeline's first step: a base64 zlib-compressed uint8 HxWx3 image in, a cropped uint8
    3xSxS array out (for a network that takes uint8 pixels, like the check's ResNet-50)."""

    def setup(self, device: str) -> None:
        self.source = int(self.handler_args.get("source_size", 256))
        self.size = int(self.handler_args.get("size", 224))

    def decode(self, item: Any) -> np.ndarray:
        pixels = np.frombuffer(zlib.decompress(base64.b64decode(item)), np.uint8).reshape(self.source, self.source, 3)
        top = (self.source - self.size) // 2
        return np.ascontiguousarray(pixels[top : top + self.size, top : top + self.size].transpose(2, 0, 1))

    def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        return items
