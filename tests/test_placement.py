"""CPU shares and devices per worker, computed from a config for a given machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.config import parse_config
from inferd.errors import ConfigError
from inferd.placement import Host, cgroup_cpu_quota, plan

EIGHT_CPUS = Host(cpus=tuple(range(8)), cpu_count=8, gpu_count=0)


def slots_of(text: str, host: Host = EIGHT_CPUS) -> list[tuple[str, str, tuple[int, ...], int]]:
    return [(s.model, s.name, s.cpus, s.threads) for s in plan(parse_config(text, "c.yaml"), host)]


def test_an_explicit_set_is_split_into_equal_disjoint_shares() -> None:
    assert slots_of("models: [{name: a, path: x, workers_per_device: 2, cpu_affinity: '0-3'}]") == [
        ("a", "cpu:0/0", (0, 1), 2),
        ("a", "cpu:0/1", (2, 3), 2),
    ]


def test_without_sets_the_free_cpus_are_divided_without_oversubscribing() -> None:
    slots = slots_of(
        "models: [{name: a, path: x, workers_per_device: 2}, {name: b, path: x}, {name: c, path: x, cpu_affinity: '6-7'}]"
    )
    auto = [s for s in slots if s[0] != "c"]
    assert sum(threads for *_, threads in auto) == 5  # CPU 5 is left to the main process
    used = [cpu for _, _, cpus, _ in auto for cpu in cpus]
    assert sorted(used) == [0, 1, 2, 3, 4]  # disjoint, and none of c's CPUs


def test_a_lone_worker_leaves_the_main_process_a_cpu() -> None:
    assert slots_of("models: [{name: a, path: x}]", Host((0, 1), 2, 0)) == [("a", "cpu:0/0", (0,), 1)]


def test_more_workers_than_cpus_get_one_thread_each() -> None:
    slots = slots_of("models: [{name: a, path: x, workers_per_device: 3}]", Host((0, 1), 2, 0))
    assert [(cpus, threads) for *_, cpus, threads in slots] == [((0,), 1), ((1,), 1), ((0,), 1)]


def test_cpus_that_do_not_exist_or_are_not_ours_are_config_errors() -> None:
    host = Host(cpus=(0, 1), cpu_count=4, gpu_count=0)
    with pytest.raises(ConfigError) as caught:
        plan(parse_config("models: [{name: a, path: x, cpu_affinity: '1-2'}, {name: b, path: x, cpu_affinity: '12'}]", "p.yaml"), host)
    assert caught.value.problems == [
        "models[0].cpu_affinity: CPU 2 is not available to inferd (it may use 0-1)",
        "models[1].cpu_affinity: CPU 12 does not exist (this machine has 0-3)",
    ]


def test_a_set_that_cannot_be_split_equally_is_an_error() -> None:
    with pytest.raises(ConfigError, match="3 CPU\\(s\\) cannot be split equally among 2 worker"):
        plan(parse_config("models: [{name: a, path: x, workers_per_device: 2, cpu_affinity: '0-2'}]"), EIGHT_CPUS)


def test_gpu_devices_are_checked_against_visible_gpus() -> None:
    two_gpus = Host(tuple(range(8)), 8, 2)
    slots = slots_of("models: [{name: g, path: x, device: cuda, workers_per_device: 2}]", two_gpus)
    assert [name for _, name, _, _ in slots] == ["cuda:0/0", "cuda:0/1", "cuda:1/0", "cuda:1/1"]
    assert all(cpus == () and threads == 1 for *_, cpus, threads in slots)
    with pytest.raises(ConfigError, match="models\\[0\\].device: GPU cuda:2 does not exist"):
        plan(parse_config("models: [{name: g, path: x, device: 'cuda:2'}]"), two_gpus)
    with pytest.raises(ConfigError, match="no GPU is visible"):
        plan(parse_config("models: [{name: g, path: x, device: cuda}]"), EIGHT_CPUS)


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(v1) == 3
