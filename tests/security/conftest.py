"""Security tests attack a live `inferd serve` over loopback and print what they measured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, start_server
from tests.security.probes import REPORTED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTED:
        return
    terminalreporter.section("security figures")
    for name, figures in REPORTED:
        terminalreporter.write_line(f"{name}:")
        for key, value in figures.items():
            terminalreporter.write_line(f"  {key}: {value}")


MIB = 1024 * 1024
MAX_REQUEST_BYTES = 16 * MIB
BUDGET_BYTES = 64 * MIB
CONFIG = f"""
server: {{host: 127.0.0.1, port: 1, max_request_bytes: {MAX_REQUEST_BYTES}, max_request_bytes_held: {BUDGET_BYTES},
         body_timeout_s: 120, drain_timeout_s: 5}}
models:
  - {{name: sizes, handler: "{Path(__file__).parent / "models.py"}:Sizes", max_batch_size: 4,
     request_bytes_fraction: 1.0, handler_args: {{delay_s: 0.05}}}}
  - {{name: tiny, path: "{{MODELS}}/tiny.pt", max_batch_size: 32, inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]}}
  - {{name: wide, path: "{{MODELS}}/tiny.pt", max_batch_size: 32, inputs: [{{name: input, datatype: FP32, shape: [-1, -1]}}]}}
"""


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    """One daemon for the whole suite: each test measures from its own baseline and leaves
    nothing held behind (each waits for inferd_request_bytes_held to return to 0)."""
    running = start_server(tmp_path_factory.mktemp("security"), CONFIG)
    yield running
    running.process.kill()
    running.process.wait(10)
