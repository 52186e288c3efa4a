"""Thin wrappers around `promtool` (shipped with Debian's `prometheus` package) for tests.

`promtool check metrics` reads exposition text on stdin and prints one problem per line on stderr
("<metric> <problem>"). It exits 0 when clean, 3 when it found lint problems and 1 when the text
does not parse; in that last case the parse error becomes the single problem returned.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 60.0
LINT_PROBLEMS_EXIT = 3


class PromtoolError(RuntimeError):
    """promtool is missing, or failed in a way that is not a finding about its input."""


@dataclass(frozen=True)
class PromtoolRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def promtool_binary() -> str | None:
    """The path of the `promtool` executable, or None where it is not installed."""
    return shutil.which("promtool")


def run_promtool(*args: str | Path, stdin: str | None = None) -> PromtoolRun:
    binary = promtool_binary()
    if binary is None:
        raise PromtoolError("promtool is not on PATH (apt-get install prometheus)")
    completed = subprocess.run(
        [binary, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return PromtoolRun(completed.returncode, completed.stdout, completed.stderr)


def check_metrics(text: str) -> list[str]:
    """The problems `promtool check metrics` finds in exposition `text`; empty when clean."""
    run = run_promtool("check", "metrics", stdin=text)
    problems = [line.strip() for line in run.stderr.splitlines() if line.strip()]
    if run.returncode == 0:
        return problems  # promtool may still print notes while exiting 0; report them too
    if run.returncode == LINT_PROBLEMS_EXIT or problems:
        return problems or [f"promtool check metrics exited {run.returncode} with no message"]
    raise PromtoolError(f"promtool check metrics exited {run.returncode}: {run.output}")
