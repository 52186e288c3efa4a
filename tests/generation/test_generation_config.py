"""The generation section of a model's config: its rules, each problem named by its YAML path."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from inferd.config import parse_config
from inferd.errors import EXIT_STARTUP, ConfigError
from tests.conftest import RunningServer


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    return error.value.problems


def test_generation_needs_a_handler() -> None:
    found = problems("models: [{name: m, path: m.pt, generation: {}}]")
    assert found == ["models[0].generation: a generative model needs 'handler' (a GenerativeHandler class)"]


def test_default_max_tokens_within_the_cap() -> None:
    found = problems("models: [{name: m, handler: 'h.py:H', generation: {max_tokens: 10, default_max_tokens: 20}}]")
    assert found == ["models[0].generation: default_max_tokens (20) must be at most max_tokens (10)"]


def test_unknown_generation_key_gets_did_you_mean() -> None:
    found = problems("models: [{name: m, handler: 'h.py:H', generation: {max_prompt_token: 10}}]")
    assert found == ["models[0].generation.max_prompt_token: unknown key; did you mean 'max_prompt_tokens'?"]


def test_defaults() -> None:
    model = parse_config("models: [{name: m, handler: 'h.py:H', generation: {}}]").models[0]
    assert model.generation is not None
    assert (model.generation.max_prompt_tokens, model.generation.max_tokens, model.generation.default_max_tokens) == (
        2048, 512, 128,
    )  # fmt: skip
    assert model.generation.prefill_tokens_per_pass == 64


def test_prefill_tokens_per_pass_is_at_least_one() -> None:
    found = problems("models: [{name: m, handler: 'h.py:H', generation: {prefill_tokens_per_pass: 0}}]")
    assert len(found) == 1 and found[0].startswith("models[0].generation.prefill_tokens_per_pass: ")
    assert "0" in found[0]


def test_a_plain_handler_with_generation_stops_start_up(serve: Callable[..., RunningServer]) -> None:
    server = serve("models: [{name: g, handler: '{HANDLERS}:Echo', generation: {}}]", wait=False)
    assert server.process.wait(120) == EXIT_STARTUP
    assert "needs a GenerativeHandler subclass" in server.log()
