"""CPU sets in Linux list form ("0-3,8"), as taskset and cgroups write them."""

from __future__ import annotations

from collections.abc import Iterable


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse "0-3,8" into (0, 1, 2, 3, 8); raise ValueError with a reason on bad input."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            raise ValueError(f"empty entry in CPU list {text!r}")
        low, dash, high = part.partition("-")
        if not (low.isdigit() and (not dash or high.isdigit())):
            raise ValueError(f"{part!r} is not a CPU number or range like '0-3'")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Format CPUs as the shortest Linux list form: (0, 1, 2, 3, 8) -> "0-3,8"."""
    ordered = sorted(set(cpus))
    runs: list[str] = []
    start = previous = None
    for cpu in ordered + [None]:  # type: ignore[operator]
        if start is not None and cpu == previous + 1:  # type: ignore[operator]
            previous = cpu
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(runs)
