"""The `container` marker, and a timer whose figures pytest prints at the end of the run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

TIMINGS = pytest.StashKey[dict[str, float]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "container: builds and runs the image with podman (needs root; minutes, not seconds)"
    )
    config.stash[TIMINGS] = {}


@pytest.fixture(scope="session")
def step_timer(pytestconfig: pytest.Config) -> Callable[[str], AbstractContextManager[None]]:
    """`with step_timer("podman build"): ...` records how long the step took."""
    timings = pytestconfig.stash[TIMINGS]

    @contextmanager
    def timed(step: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            timings[step] = time.monotonic() - start

    return timed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    timings = config.stash.get(TIMINGS, {})
    if not timings:
        return
    terminalreporter.section("container job timings")
    for step, seconds in timings.items():
        terminalreporter.write_line(f"{seconds:7.1f} s  {step}")
    terminalreporter.write_line(f"{sum(timings.values()):7.1f} s  total of the timed steps")
