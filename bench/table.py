"""Rows of figures and the ratios against the performance targets, printed as plain tables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    target: str  # raw, bare, litserve <variant>, inferd native, inferd v2
    model: str
    concurrency: int | None  # None for raw (no HTTP)
    requests_per_s: float  # rows/s for raw
    p50_ms: float | None
    p99_ms: float | None
    errors: int | None
    note: str = ""


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float | None  # None when a side of it was not measured
    goal: str  # ">= 1.00" or "<= 1.00"
    detail: str

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        threshold = float(self.goal.split()[1])
        met = self.value >= threshold if self.goal.startswith(">=") else self.value <= threshold
        return "meets" if met else "misses"


def _cell(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def format_rows(rows: list[Row]) -> str:
    header = f"{'target':<22} {'model':<5} {'conc':>4} {'req/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  note"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.target:<22} {row.model:<5} {_cell(row.concurrency, 'd'):>4} "
            f"{_cell(row.requests_per_s, ',.0f'):>11} {_cell(row.p50_ms, '.2f'):>8} "
            f"{_cell(row.p99_ms, '.2f'):>8} {_cell(row.errors, 'd'):>6}  {row.note}".rstrip()
        )
    return "\n".join(lines)


def format_ratios(ratios: list[Ratio]) -> str:
    header = f"{'ratio':<44} {'value':>7} {'goal':>8} {'verdict':>7}  from"
    lines = [header, "-" * len(header)]
    for ratio in ratios:
        lines.append(
            f"{ratio.name:<44} {_cell(ratio.value, '.2f'):>7} {ratio.goal:>8} "
            f"{ratio.verdict:>7}  {ratio.detail}"
        )
    return "\n".join(lines)
