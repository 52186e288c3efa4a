"""Choosing the next token from logits, per sequence: greedy at temperature 0, else temperature
and nucleus (top_p) sampling, from the sequence's own generator where it gave a seed. Worker
side only: it imports torch. Handlers call `choose` on their last-position logits."""

from __future__ import annotations

from typing import Any

import torch

from inferd.generation.sequence import Sequence


def choose(logits: torch.Tensor, sequences: list[Sequence]) -> list[int]:
    """One token per row of `logits` (shape [len(sequences), vocab])."""
    greedy = logits.argmax(dim=-1).tolist()
    return [
        int(greedy[row]) if sequence.sampling.temperature == 0 else _sample(logits[row], sequence)
        for row, sequence in enumerate(sequences)
    ]


def _sample(logits: torch.Tensor, sequence: Sequence) -> int:
    probabilities = torch.softmax(logits.float() / sequence.sampling.temperature, dim=-1)
    if sequence.sampling.top_p < 1.0:
        probabilities = _nucleus(probabilities, sequence.sampling.top_p)
    return int(torch.multinomial(probabilities, 1, generator=_generator(sequence, logits.device)).item())


def _nucleus(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    ordered, order = probabilities.sort(descending=True)
    outside = ordered.cumsum(dim=-1) - ordered > top_p  # keep the smallest head whose mass reaches top_p
    ordered[outside] = 0.0
    kept = torch.zeros_like(probabilities).scatter(-1, order, ordered)
    return kept / kept.sum()


def _generator(sequence: Sequence, device: torch.device) -> Any:
    if sequence.generator is None and sequence.sampling.seed is not None:
        sequence.generator = torch.Generator(device=device).manual_seed(sequence.sampling.seed)
    return sequence.generator
