"""Triton's statistics extension: `GET /v2/models[/{name}[/versions/{v}]]/stats` as Triton's JSON.

The figures are each model's `InferenceTally`, recorded at the same events as its /metrics
histograms (request answered, batch dispatched, batch computed), so the two always agree. inferd
times a batch's compute as a whole: `compute_infer` holds it, and `compute_input` and
`compute_output` count the same executions with no time of their own. Nothing is cached, so
`cache_hit` and `cache_miss` stay zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inferd.metrics import Duration, InferenceTally

_NS_PER_S = 1_000_000_000


def statistics(models: Iterable[tuple[str, str, InferenceTally]]) -> dict[str, Any]:
    """The body of a stats answer for (name, version, tally) of each model asked about."""
    return {"model_stats": [model_stats(name, version, tally) for name, version, tally in models]}


def model_stats(name: str, version: str, tally: InferenceTally) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "last_inference": tally.last_inference_ms,
        "inference_count": tally.inference_count,
        "execution_count": tally.execution_count,
        "inference_stats": {
            "success": _duration(tally.success),
            "fail": _duration(tally.fail),
            "queue": _duration(tally.queue),
            "compute_input": _count_only(tally.compute),
            "compute_infer": _duration(tally.compute),
            "compute_output": _count_only(tally.compute),
            "cache_hit": _duration(Duration()),
            "cache_miss": _duration(Duration()),
        },
        "response_stats": {},
        "batch_stats": [_batch(size, duration) for size, duration in sorted(tally.by_batch_size.items())],
        "memory_usage": [],
    }


def _batch(size: int, duration: Duration) -> dict[str, Any]:
    return {
        "batch_size": size,
        "compute_input": _count_only(duration),
        "compute_infer": _duration(duration),
        "compute_output": _count_only(duration),
    }


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": round(duration.total_s * _NS_PER_S)}


def _count_only(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": 0}
