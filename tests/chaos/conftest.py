"""Chaos tests run real `inferd serve` processes under load and faults, and print their figures."""

from __future__ import annotations

from typing import Any

from tests.chaos.load import REPORTED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTED:
        return
    terminalreporter.section("chaos figures")
    for name, figures in REPORTED:
        terminalreporter.write_line(f"{name}:")
        for key, value in figures.items():
            terminalreporter.write_line(f"  {key}: {value}")
