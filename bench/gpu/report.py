"""The GPU check's result rows, printed as one table and written as JSON."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PASS, FAIL, SKIPPED, ERROR = "PASS", "FAIL", "SKIPPED", "ERROR"


@dataclass(frozen=True)
class Row:
    check: str  # "1a": the check number, then a letter per row of it
    name: str
    figure: str  # what was measured, in words and numbers
    expected: str
    status: str  # PASS, FAIL, SKIPPED or ERROR
    note: str = ""  # why it failed or was skipped, or how the figure was read


def make(spec: tuple[str, str, str], figure: str, status: str, note: str = "") -> Row:
    """A row from its (check, name, expected) spec and what was found."""
    check, name, expected = spec
    return Row(check, name, figure, expected, status, note)


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def skipped(check: str, name: str, expected: str, reason: str) -> Row:
    return Row(check, name, "-", expected, SKIPPED, reason)


def error(check: str, name: str, expected: str, reason: str) -> Row:
    return Row(check, name, "-", expected, ERROR, reason)


def guarded(spec: tuple[str, str, str], measure: Callable[[], Row]) -> Row:
    """One row's measurement; an exception becomes that row's ERROR, so the next rows still run."""
    try:
        return measure()
    except Exception as problem:  # a broken measurement is reported, never allowed to end the check
        return error(*spec, f"{type(problem).__name__}: {str(problem)[-600:]}")


_WIDTHS = {"check": 5, "name": 34, "figure": 58, "expected": 34, "status": 7}


def format_table(rows: list[Row]) -> str:
    """Fixed columns; long cells wrap inside their column, notes go on their own line under a row."""
    header = "  ".join(title.ljust(width) for title, width in _WIDTHS.items())
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [textwrap.wrap(str(getattr(row, key)), width) or [""] for key, width in _WIDTHS.items()]
        for line_index in range(max(len(cell) for cell in cells)):
            parts = [
                (cell[line_index] if line_index < len(cell) else "").ljust(width)
                for cell, width in zip(cells, _WIDTHS.values())
            ]
            lines.append("  ".join(parts).rstrip())
        if row.note:
            for note_line in textwrap.wrap(row.note, len(header) - 8):
                lines.append(f"       {note_line}")
    return "\n".join(lines)


def summary(rows: list[Row]) -> dict[str, int]:
    counts = {status: 0 for status in (PASS, FAIL, SKIPPED, ERROR)}
    for row in rows:
        counts[row.status] += 1
    return counts


def write_json(path: Path, rows: list[Row], machine: dict[str, Any], elapsed_s: float, mode: str) -> None:
    document = {
        "mode": mode,
        "elapsed_s": round(elapsed_s, 1),
        "machine": machine,
        "summary": summary(rows),
        "rows": [asdict(row) for row in rows],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
