"""The pool's eviction plan as a pure function: which loaded models go so that one more fits."""

from __future__ import annotations

import pytest

from inferd.pool_budget import MIB, Budget, PoolFull, Resident, plan_evictions


def idle(name: str, last_used_s: float, **footprint_mib: int) -> Resident:
    return Resident(name, {device: mib * MIB for device, mib in footprint_mib.items()}, last_used_s)


def kept(name: str, why: str, last_used_s: float = 0.0, **footprint_mib: int) -> Resident:
    return Resident(name, {device: mib * MIB for device, mib in footprint_mib.items()}, last_used_s, why)


def test_within_budget_nothing_goes() -> None:
    assert plan_evictions(Budget(max_models=3), [idle("a", 1), idle("b", 2)], "c", {}) == []
    assert plan_evictions(Budget(), [idle("a", 1)], "c", {"cpu": 10**12}) == []  # no budget at all


def test_the_least_recently_used_idle_model_goes_first() -> None:
    resident = [idle("a", 30), idle("b", 10), idle("c", 20)]
    assert plan_evictions(Budget(max_models=3), resident, "d", {}) == ["b"]
    assert plan_evictions(Budget(max_models=2), resident, "d", {}) == ["b", "c"]


def test_a_busy_or_eager_model_is_never_evicted() -> None:
    resident = [
        kept("a", "has 3 request(s) queued or running", 1),
        kept("b", "is eager (load: eager)", 2),
        idle("c", 9),
    ]
    assert plan_evictions(Budget(max_models=3), resident, "d", {}) == ["c"]
    with pytest.raises(PoolFull) as refused:
        plan_evictions(Budget(max_models=2), resident, "d", {})
    message = refused.value.message
    assert refused.value.status == 503
    assert "cannot load model 'd'" in message and "server.pool.max_loaded_models (2)" in message
    assert "'a' has 3 request(s) queued or running" in message and "'b' is eager" in message


def test_memory_budget_evicts_until_the_new_model_fits() -> None:
    budget = Budget(max_bytes={"cpu": 1000 * MIB})
    resident = [idle("a", 1, cpu=400), idle("b", 2, cpu=400), idle("c", 3, cpu=100)]
    assert plan_evictions(budget, resident, "d", {"cpu": 100 * MIB}) == []  # 900 + 100 fits exactly
    assert plan_evictions(budget, resident, "d", {"cpu": 300 * MIB}) == ["a"]
    assert plan_evictions(budget, resident, "d", {"cpu": 700 * MIB}) == ["a", "b"]


def test_only_models_that_free_the_short_device_go() -> None:
    budget = Budget(max_bytes={"cuda:0": 10_000 * MIB})
    resident = [idle("cpu-only", 1, cpu=4000), idle("on-gpu", 2, cpu=500, **{"cuda:0": 8000})]
    assert plan_evictions(budget, resident, "new", {"cuda:0": 4000 * MIB}) == ["on-gpu"]


def test_a_model_larger_than_the_whole_budget_is_refused_without_evicting() -> None:
    with pytest.raises(PoolFull, match=r"holds 2048 MiB on cpu, more than the whole server.pool.max_memory_mb.cpu"):
        plan_evictions(Budget(max_bytes={"cpu": 1024 * MIB}), [idle("a", 1, cpu=10)], "big", {"cpu": 2048 * MIB})


def test_memory_refusal_names_the_device_and_what_holds_it() -> None:
    budget = Budget(max_bytes={"cpu": 1000 * MIB})
    resident = [kept("a", "has 1 request(s) queued or running", cpu=600), idle("b", 1, **{"cuda:0": 50})]
    with pytest.raises(PoolFull) as refused:
        plan_evictions(budget, resident, "d", {"cpu": 500 * MIB})
    message = refused.value.message
    assert "hold 600 MiB on cpu (server.pool.max_memory_mb.cpu: 1000)" in message
    assert "'b' frees nothing there" in message


def test_an_unknown_footprint_counts_as_nothing() -> None:
    budget = Budget(max_bytes={"cpu": 1000 * MIB})
    assert plan_evictions(budget, [idle("a", 1, cpu=999)], "never-loaded", {}) == []
