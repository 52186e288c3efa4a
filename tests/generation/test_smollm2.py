"""The SmolLM2 example as users reach it: the official `openai` client against the example config.
Greedy answers must equal transformers' own `generate` on the same prompt, also when several
sequences share the running batch. Few tests: each token costs real compute."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from inferd.generation.sequence import Sequence
from inferd.messages import Sampling
from tests.conftest import EXAMPLE_MODELS, RunningServer, example_config, start_server

NEW_TOKENS = 24
GREEDY = Sampling(temperature=0)
PROMPTS = ["What is the capital of France?", "Name three colours.", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("smollm2"), example_config("smollm2"), wait=False)
    running.wait_ready(300)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def handler() -> Any:
    """The example's handler in this process: it loads the weights as the worker does."""
    sys.path.insert(0, str(EXAMPLE_MODELS))
    from smollm2 import SmolLM2

    handler = SmolLM2()
    handler.setup("cpu")
    return handler


@pytest.fixture(scope="module")
def reference_tokens(handler: Any) -> Any:
    """transformers' own greedy `generate`, in this process, on the same weights: the tokens a user
    prompt gets before the first end token, computed once per prompt for the module's tests."""
    import torch

    @functools.cache
    def generate(prompt: str) -> tuple[int, ...]:
        ids = torch.tensor([handler.tokenize(user(prompt))])
        out = handler.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
        )
        tokens = out[0, ids.shape[1] :].tolist()
        ends = handler.end_tokens()
        return tuple(tokens[: next((i for i, token in enumerate(tokens) if token in ends), len(tokens))])

    return generate


@pytest.fixture(scope="module")
def reference(handler: Any, reference_tokens: Any) -> Any:
    return lambda prompt: handler.detokenize(list(reference_tokens(prompt)))


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def chat(client: openai.OpenAI, prompt: str) -> str:
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=NEW_TOKENS
    )
    return answer.choices[0].message.content or ""


def test_greedy_chat_answers_france_as_generate_does(client: openai.OpenAI, reference: Any) -> None:
    answer = chat(client, PROMPTS[0])
    assert answer == "The capital of France is Paris."
    assert answer == reference(PROMPTS[0])


def test_concurrent_greedy_answers_equal_generate(client: openai.OpenAI, reference: Any) -> None:
    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # they share the running batch
        answers = list(pool.map(lambda prompt: chat(client, prompt), PROMPTS))
    assert answers == [reference(p) for p in PROMPTS]


def test_streamed_chat_equals_the_whole_answer(client: openai.OpenAI) -> None:
    chunks = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": PROMPTS[1]}], temperature=0,
        max_tokens=NEW_TOKENS, stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat(client, PROMPTS[1])


def test_sequences_joining_and_leaving_the_batch_each_answer_as_generate_does(
    handler: Any, reference_tokens: Any
) -> None:
    """In-process, the handler's own steps: two sequences join every other step and each leaves
    at its own max_tokens, so rows of the batch's cache move while the others decode."""
    prompts = [*PROMPTS, "Why is the sky blue?", "List the planets."]
    limits = [8, NEW_TOKENS, 12, 20, 16]
    waiting = [user(prompt) for prompt in prompts]
    running: list[Sequence] = []
    made: dict[int, list[int]] = {}
    step = 0
    while waiting or running:
        if step % 2 == 0:
            for _ in range(min(2, len(waiting))):
                index = len(prompts) - len(waiting)
                running.append(Sequence(index, handler.tokenize(waiting.pop(0)), limits[index], GREEDY))
        for sequence, token in zip(list(running), handler.step(running)):
            if token not in handler.end_tokens():
                sequence.tokens.append(token)
            if token in handler.end_tokens() or len(sequence.tokens) == sequence.max_tokens:
                made[sequence.sequence_id] = sequence.tokens
                running.remove(sequence)
                handler.release(sequence)
        step += 1
    assert [made[i] for i in range(len(prompts))] == [
        list(reference_tokens(prompt)[:limit]) for prompt, limit in zip(prompts, limits)
    ]


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]
