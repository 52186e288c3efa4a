"""The supervisor: restart backoff, exit descriptions, the OOM-kill counter (pure), and one model's
real worker processes through a crash loop into `unavailable` and back, on uvloop; process titles."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
from pathlib import Path

import psutil
import pytest
import uvloop

from inferd.cgroup import OomKills, counter_file
from inferd.config import ModelConfig
from inferd.placement import WorkerSlot
from inferd.supervisor import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    READY,
    Supervisor,
    describe_exit,
    exit_cause,
    restart_delay_s,
)
from inferd.worker import WorkerSpec
from tests.conftest import HANDLERS, TESTS, wait_until

# ---- pure -----------------------------------------------------------------------------------


def test_a_worker_that_was_serving_is_restarted_at_once() -> None:
    assert restart_delay_s(0) == 0.0


def test_boot_failures_back_off_doubling_up_to_the_cap() -> None:
    delays = [restart_delay_s(n) for n in range(1, 12)]
    assert delays[:4] == [BACKOFF_FIRST_S, 2 * BACKOFF_FIRST_S, 4 * BACKOFF_FIRST_S, 8 * BACKOFF_FIRST_S]
    assert all(b == min(2 * a, BACKOFF_MAX_S) for a, b in itertools.pairwise(delays))
    assert delays[-1] == BACKOFF_MAX_S


def test_exits_are_described_for_people_and_labelled_for_metrics() -> None:
    assert (describe_exit(-9), exit_cause(-9)) == ("killed by SIGKILL", "SIGKILL")
    assert (describe_exit(-9, oom_killed=True), exit_cause(-9, oom_killed=True)) == (
        "killed by the kernel's OOM killer (SIGKILL)",
        "oom_kill",
    )
    assert (describe_exit(17), exit_cause(17)) == ("exit code 17", "exit_code")
    assert (describe_exit(None), exit_cause(None)) == ("exit status unknown", "unknown")
    assert (describe_exit(-200), exit_cause(-200)) == ("killed by signal 200", "signal")


def _fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc-self"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo.replace("{ROOT}", str(tmp_path)))
    return proc


def _counter(path: Path, kills: int, v1: bool) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    name, text = ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n") if v1 else (
        "memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill {n}\noom_group_kill 0\n"
    )  # fmt: skip
    (path / name).write_text(text.format(n=kills))
    return path / name


def test_the_v2_counter_of_this_process_cgroup_is_found(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "0::/app.slice/inferd\n", "30 1 0:26 / {ROOT}/cg rw - cgroup2 cgroup2 rw\n")
    expected = _counter(tmp_path / "cg" / "app.slice" / "inferd", 2, v1=False)
    assert counter_file(proc) == expected


def test_a_hybrid_layout_uses_the_v1_memory_hierarchy(tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path,
        "4:memory:/jobs/7\n1:cpu:/\n0::/\n",
        "35 31 0:32 / {ROOT}/memory rw - cgroup cgroup rw,memory\n41 31 0:38 / {ROOT}/unified rw - cgroup2 cgroup2 rw\n",
    )
    (tmp_path / "unified").mkdir()  # v2 without the memory controller: no memory.events
    expected = _counter(tmp_path / "memory" / "jobs" / "7", 0, v1=True)
    assert counter_file(proc) == expected


def test_without_a_cgroup_namespace_the_mount_root_is_used(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "0::/docker/abc123\n", "30 1 0:26 / {ROOT}/cg rw - cgroup2 cgroup2 rw\n")
    expected = _counter(tmp_path / "cg", 0, v1=False)  # the host's path does not exist in here
    assert counter_file(proc) == expected


def test_no_memory_cgroup_means_no_counter(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "0::/\n", "30 1 0:26 / {ROOT}/cg rw - cgroup2 cgroup2 rw\n")
    assert counter_file(proc) is None
    assert OomKills(None).claim() is False


def test_each_oom_kill_is_claimed_once(tmp_path: Path) -> None:
    counter = _counter(tmp_path, 3, v1=False)
    kills = OomKills(counter)
    assert not kills.claim()  # the three before it started are not ours to explain
    _counter(tmp_path, 5, v1=False)
    assert [kills.claim(), kills.claim(), kills.claim()] == [True, True, False]


# ---- real worker processes --------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.exits: list[str] = []
        self.memory_replacements = 0

    def worker_exited(self, cause: str) -> None:
        self.exits.append(cause)

    def channel_bytes(self, direction: str, path: str, nbytes: int) -> None:
        pass

    def worker_replaced_for_memory(self) -> None:
        self.memory_replacements += 1


async def _wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _crash_loop_and_recovery(marker: Path, observer: Recorder) -> list[str]:
    model = ModelConfig(
        name="flaky", handler=f"{HANDLERS}:FailsToLoadWhileMarked", handler_args={"marker": str(marker)}
    )
    slot = WorkerSlot(model="flaky", device="cpu", index=0, cpus=(), threads=1)
    supervisor = Supervisor(model, [WorkerSpec(slot, model, TESTS, "info")], observer, OomKills(None))
    states = []
    supervisor.on_change = lambda: states.append(supervisor.state)
    await supervisor.start()
    try:
        first = supervisor.handles[slot.name]
        marker.touch()
        os.kill(first.pid, signal.SIGKILL)
        await _wait_for(lambda: supervisor.state == "unavailable", 60, "the model to be unavailable")
        assert supervisor.unavailable_reason and "refusing to load while" in supervisor.unavailable_reason
        marker.unlink()
        await _wait_for(lambda: supervisor.state == "ready", 60, "a restart to succeed")
        assert supervisor.handles[slot.name].pid != first.pid and supervisor.handles[slot.name].state == READY
        assert supervisor.restarts_total == len(observer.exits)
    finally:
        await supervisor.stop(timeout_s=10)
    return states


def test_a_crash_loop_backs_off_to_unavailable_and_recovers_on_uvloop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Several unexpected exits in a row, on the loop the daemon runs on (uvloop's timer handles
    have no when(): the restart bookkeeping must not need it)."""
    caplog.set_level(logging.INFO)
    observer = Recorder()
    states = uvloop.run(_crash_loop_and_recovery(tmp_path / "broken", observer))
    assert observer.exits[0] == "SIGKILL" and len(observer.exits) >= 3
    assert set(observer.exits[1:]) == {"exit_code"}  # each failed boot exits with the start-up code
    assert "unavailable" in states and states[-1] != "unavailable"
    problems = [r for r in caplog.records if r.name == "asyncio" or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]
    died = [r.getMessage() for r in caplog.records if " died: " in r.getMessage()]
    assert len(died) == len(observer.exits)  # one line per exit


# ---- process titles -------------------------------------------------------------------------


def _title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def test_processes_carry_titles_in_ps(serve) -> None:
    server = serve(
        """
        models:
          - {name: echo, handler: "{HANDLERS}:Echo", workers_per_device: 2}
        """
    )
    main = psutil.Process(server.process.pid)
    wait_until(lambda: _title(main.pid) == "inferd: main", 30, "the main process's title")
    helpers = [p for p in main.children() if _title(p.pid) == "inferd: fork helper"]
    assert len(helpers) == 1
    workers = {w["pid"]: w["slot"] for w in server.models()["echo"]["workers"]}
    assert {pid: _title(pid) for pid in workers} == {
        pid: f"inferd: worker echo {slot}" for pid, slot in workers.items()
    }
    forked = {p.pid: _title(p.pid) for p in helpers[0].children()}  # by the helper, not by main
    assert {pid for pid, title in forked.items() if title != "inferd: json decoder"} == set(workers)
    assert list(forked.values()).count("inferd: json decoder") == 1
