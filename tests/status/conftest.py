"""The status page's tests run it in a real headless Chromium; their screenshots are named at the end
of the test output."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.status.browser import INSTALL_HINT, Browser, chromium_executable
from tests.status.screenshots import SCREENSHOTS


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One Chromium for a module's tests (each opens its own tab). Missing, it skips them, as the
    Prometheus tests do, except under CI (CI set), where it fails them: a missing install step
    must not pass as green."""
    executable = chromium_executable()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    folder = tmp_path_factory.mktemp("chromium")
    running = Browser(executable, folder / "profile", folder / "chromium.log")
    yield running
    running.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS:
        terminalreporter.section("status page screenshots")
        for test, path in SCREENSHOTS:
            terminalreporter.write_line(f"{test}: {path}")
