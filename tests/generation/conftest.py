"""Configs for the generation tests: the tiny deterministic generators of generators.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server

GENERATORS = Path(__file__).resolve().parent / "generators.py"
YIELDERS = Path(__file__).resolve().parent / "yielders.py"  # handlers whose predict yields


def capitals_config(
    name: str = "caps", max_batch_size: int = 8, step_delay_s: float = 0.0, extra: str = "", workers: int = 1
) -> str:
    return f"""
models:
  - name: {name}
    handler: {GENERATORS}:Capitals
    handler_args: {{step_delay_s: {step_delay_s}}}
    max_batch_size: {max_batch_size}
    workers_per_device: {workers}
    generation: {{max_prompt_tokens: 64, max_tokens: 400, default_max_tokens: 100}}
{extra}"""


@pytest.fixture(scope="module")
def caps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for a module's tests that only read from it."""
    server = start_server(tmp_path_factory.mktemp("caps"), capitals_config())
    yield server
    server.stop()
