"""The ratios against the performance targets, computed from the table's rows."""

from __future__ import annotations

from table import Ratio, Row


def find(rows: list[Row], target: str, model: str, concurrency: int | None) -> Row | None:
    return next(
        (
            r
            for r in rows
            if r.target == target and r.model == model and r.concurrency == concurrency
        ),
        None,
    )


def best_litserve(rows: list[Row], model: str, concurrency: int) -> Row | None:
    candidates = [
        r
        for r in rows
        if r.target.startswith("litserve")
        and r.model == model
        and r.concurrency == concurrency
        and not r.errors
    ]
    return max(candidates, key=lambda r: r.requests_per_s, default=None)


def throughput_ratio(name: str, ours: Row | None, theirs: Row | None, goal: str = ">= 1.00") -> Ratio:
    if ours is None or theirs is None or theirs.requests_per_s == 0:
        return Ratio(name, None, goal, "not measured")
    if ours.errors or theirs.errors:
        return Ratio(
            name, None, goal, f"errors in {ours.target if ours.errors else theirs.target}"
        )
    return Ratio(
        name,
        ours.requests_per_s / theirs.requests_per_s,
        goal,
        f"{ours.requests_per_s:,.0f} / {theirs.requests_per_s:,.0f} ({theirs.target})",
    )


def latency_gap(name: str, ours: Row | None, theirs: Row | None) -> Ratio:
    """How many milliseconds inferd's p50 is above the other's (the target: at most 0.5 ms)."""
    if ours is None or theirs is None or theirs.p50_ms is None or ours.p50_ms is None:
        return Ratio(name, None, "<= 0.50", "not measured")
    if ours.errors or theirs.errors:
        return Ratio(
            name, None, "<= 0.50", f"errors in {ours.target if ours.errors else theirs.target}"
        )
    return Ratio(
        name,
        ours.p50_ms - theirs.p50_ms,
        "<= 0.50",
        f"{ours.p50_ms:.2f} ms - {theirs.p50_ms:.2f} ms",
    )


def ratios(rows: list[Row], top: int) -> list[Ratio]:
    tiny_inferd = find(rows, "inferd native", "tiny", top)
    tiny_bare = find(rows, "bare", "tiny", top)
    found = [throughput_ratio(f"tiny c{top}: inferd / bare", tiny_inferd, tiny_bare, ">= 0.80")]
    other_bare = find(rows, "bare (other python)", "tiny", top)
    if other_bare:
        found.append(
            throughput_ratio(f"tiny c{top}: inferd / bare (other python)", tiny_inferd, other_bare)
        )
    found.append(
        throughput_ratio(
            f"tiny c{top}: inferd / best litserve", tiny_inferd, best_litserve(rows, "tiny", top), ">= 3.00"
        )
    )
    mlp_inferd = find(rows, "inferd native", "mlp", top)
    raw_mlp = find(rows, "raw", "mlp", None)
    ceiling = min(
        (r for r in (tiny_bare, raw_mlp) if r), key=lambda r: r.requests_per_s, default=None
    )
    found.append(
        throughput_ratio(f"mlp c{top}: inferd / min(bare tiny, raw mlp)", mlp_inferd, ceiling, ">= 0.65")
    )
    found.append(
        throughput_ratio(
            f"mlp c{top}: inferd / best litserve", mlp_inferd, best_litserve(rows, "mlp", top), ">= 8.00"
        )
    )
    found.append(
        throughput_ratio(
            f"tiny c{top}: inferd v2 / inferd native",
            find(rows, "inferd v2", "tiny", top),
            tiny_inferd,
            ">= 0.80",
        )
    )
    found.append(
        latency_gap(
            "tiny c1 p50: inferd - bare, ms (timeout 0)",
            find(rows, "inferd native", "tiny", 1),
            find(rows, "bare", "tiny", 1),
        )
    )
    return found
