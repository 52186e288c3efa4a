"""Memory faults: a leaking model's workers are replaced at max_worker_memory_mb with no request
lost; a worker the kernel's OOM killer ends is reported as an OOM kill, in the log and /metrics."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.cgroup import counter_file
from tests.chaos.load import Load, by_status, report
from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, wait_until

LIMIT_MB = 1024
LEAK_MB = 128

LEAKY = f"""
models:
  - name: leaky
    handler: {{HANDLERS}}:Leaky
    handler_args: {{leak_mb: {LEAK_MB}}}
    workers_per_device: 2
    max_batch_size: 1
    max_worker_memory_mb: {LIMIT_MB}
"""


def _metric(server: RunningServer, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in server.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(name + "{") and ",".join(sorted(series[len(name) + 1 : -1].split(","))) == wanted:
            return float(value)
    return 0.0


def test_a_leaking_worker_is_replaced_at_its_memory_limit_with_no_request_lost(serve) -> None:
    server = serve(LEAKY)
    body = lambda c, n: {"inputs": [f"{c}-{n}"]}  # noqa: E731
    outcomes = (
        Load(server.url, "/models/leaky/predict", body, 2, 180, max_requests_per_client=40, keep_json=True)
        .start()
        .join()
    )
    statuses = by_status(outcomes)
    answers = [o.json["outputs"][0] for o in outcomes if o.status == 200]
    replacements = _metric(server, "inferd_worker_memory_replacements_total", model="leaky")
    log = server.log()
    report("memory guard", {
        "requests sent": len(outcomes),
        "answered by status": statuses,
        "replacements (metric / log lines)": (replacements, log.count(f"over max_worker_memory_mb ({LIMIT_MB}): replacing it")),
        "worker processes that answered": len({a["pid"] for a in answers}),
        "largest RSS seen after a batch MiB": round(max(a["rss_mib"] for a in answers)),
    })  # fmt: skip
    assert statuses == {"200": 80}, statuses
    # 40 batches per worker slot at 128 MiB each cross 1 GiB several times in each slot
    assert replacements >= 4 and log.count(f"over max_worker_memory_mb ({LIMIT_MB}): replacing it") == replacements
    assert len({a["pid"] for a in answers}) >= replacements  # each retired worker answered its last batch
    # a worker serves no batch after the one that took it past the limit
    assert max(a["rss_mib"] for a in answers) < LIMIT_MB + LEAK_MB + 16
    assert " died: " not in log  # retired on purpose: no worker counted as a crash
    assert_clean_log(log)


# ---- a real OOM kill, in a memory cgroup of the daemon's own ----------------------------------------


@pytest.fixture
def memory_cgroup(tmp_path: Path) -> Iterator[Path]:
    """A child memory cgroup (v1) with a 1.5 GiB limit, where this machine lets us make one."""
    counter = counter_file()
    if counter is None or counter.name != "memory.oom_control" or not os.access(counter.parent, os.W_OK):
        pytest.skip("needs a writable cgroup v1 memory hierarchy with an oom_kill counter")
    group = counter.parent / f"inferd-test-{os.getpid()}-{tmp_path.name}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(1536 * 2**20))
    except OSError as error:
        pytest.skip(f"cannot make a memory cgroup here: {error}")
    yield group
    wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), 30, "the cgroup to empty")
    group.rmdir()


def test_an_oom_killed_worker_is_reported_as_an_oom_kill(serve, memory_cgroup: Path) -> None:
    server = serve(
        """
        models:
          - {name: hog, handler: "{HANDLERS}:HogOnItem", handler_args: {hog_mb: 4096}, workers_per_device: 1}
        """,
        wait=False,
    )
    # Into the cgroup before it starts its fork helper: every worker is born there. The daemon
    # reads its counter at start-up, from its own cgroup.
    (memory_cgroup / "cgroup.procs").write_text(str(server.process.pid))
    server.wait_ready()
    (victim,) = server.worker_pids("hog")
    answer = server.post("/models/hog/predict", {"inputs": ["hog"]})
    wait_until(lambda: server.all_workers_ready() and victim not in server.worker_pids("hog"), 60, "a replacement")
    log = server.log()
    died = re.findall(rf"\(pid {victim}\) died: (.*)", log)
    oom_kills = _metric(server, "inferd_worker_exits_total", model="hog", cause="oom_kill")
    report("OOM kill", {"answer to the hog": (answer.status_code, answer.json()), "logged": died, "metric": oom_kills})
    assert answer.status_code == 503 and "OOM killer" in answer.json()["error"]
    assert died == ["killed by the kernel's OOM killer (SIGKILL)"]
    assert oom_kills == 1
    assert server.post("/models/hog/predict", {"inputs": ["x"]}).status_code == 200
    server.stop()
    assert_clean_log(server.log())
