"""The order of a step's parts in a generative model's worker (the runner in-process, with the tiny
Capitals generator): newcomers are prefilled first, in passes of at most prefill_tokens_per_pass
prompt tokens, each pass's chunks apart, and only then the running sequences decode."""

from __future__ import annotations

from pathlib import Path

from inferd.config import parse_config
from inferd.generation.runner import GenerationRunner
from inferd.messages import Generate
from tests.generation.conftest import GENERATORS


def runner(prefill_tokens_per_pass: int) -> GenerationRunner:
    text = f"""
models:
  - name: caps
    handler: {GENERATORS}:Capitals
    generation: {{prefill_tokens_per_pass: {prefill_tokens_per_pass}}}
"""
    return GenerationRunner(parse_config(text).models[0], "cpu", Path("."))


def start(runner: GenerationRunner, sequence_id: int, prompt: str) -> None:
    assert runner.start(Generate(sequence_id, prompt, max_tokens=50, max_prompt_tokens=64)) is None


def parts(runner: GenerationRunner) -> list[list[tuple[int, str]]]:
    return [[(chunk.sequence_id, chunk.text) for chunk in part] for part in runner.steps()]


def test_newcomers_are_prefilled_in_passes_before_the_running_decode() -> None:
    caps = runner(prefill_tokens_per_pass=8)
    for sequence_id, prompt in ((1, "abcdef"), (2, "ghijkl"), (3, "mn")):
        start(caps, sequence_id, prompt)
    assert parts(caps) == [[(1, "A")], [(2, "G"), (3, "M")]]  # 6 tokens, then 6 + 2
    start(caps, 4, "op")
    assert parts(caps) == [[(4, "O")], [(1, "B"), (2, "H"), (3, "N")]]
    assert parts(caps) == [[(1, "C"), (2, "I"), (3, ""), (4, "P")]]  # 3 ended: its last chunk is empty


def test_a_prompt_over_the_budget_is_prefilled_alone() -> None:
    caps = runner(prefill_tokens_per_pass=4)
    start(caps, 1, "abcdefgh")
    start(caps, 2, "ij")
    assert parts(caps) == [[(1, "A")], [(2, "I")]]
