"""Choosing tokens from logits: greedy at temperature 0, seeded sampling repeats, top_p keeps the
smallest head of the distribution whose mass reaches it."""

from __future__ import annotations

import torch

from inferd.generation.sampling import choose
from inferd.generation.sequence import Sequence
from inferd.messages import Sampling

LOGITS = torch.tensor([[0.0, 3.0, 2.9, -1.0, 0.5]])


def draws(sampling: Sampling, count: int = 50) -> list[int]:
    sequence = Sequence(1, [1], 10, sampling)
    return [choose(LOGITS, [sequence])[0] for _ in range(count)]


def test_temperature_zero_is_greedy() -> None:
    assert set(draws(Sampling(temperature=0))) == {1}


def test_a_seed_repeats_its_draws_and_sampling_varies() -> None:
    first = draws(Sampling(temperature=1.5, seed=7))
    assert first == draws(Sampling(temperature=1.5, seed=7))
    assert len(set(first)) > 1


def test_top_p_keeps_only_the_head() -> None:
    assert set(draws(Sampling(temperature=1.0, top_p=0.5, seed=1))) <= {1, 2}
    assert set(draws(Sampling(temperature=1.0, top_p=0.01, seed=1))) == {1}
