"""SIGKILL the fork helper under load: no worker goes with it, no request fails, and the next worker
that needs starting gets a new helper."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import psutil

from tests.chaos.load import Load, by_status, latency_figures, report
from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, wait_until

CONFIG = """
models:
  - name: echo
    handler: {HANDLERS}:Echo
    handler_args: {delay_s: 0.005}
    workers_per_device: 2
    max_batch_size: 4
    batch_timeout_ms: 2
"""


def _helpers(server: RunningServer) -> list[psutil.Process]:
    """The main process's children titled as fork helpers (a dead one lingers as a zombie)."""
    found = []
    for child in psutil.Process(server.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and child.cmdline()[:1] == ["inferd: fork helper"]:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_killing_the_fork_helper_under_load_fails_no_request_and_a_new_one_starts(serve) -> None:
    server = serve(CONFIG)
    (helper,) = _helpers(server)
    workers = sorted(server.worker_pids("echo"))
    load = Load(server.url, "/models/echo/predict", lambda c, n: {"inputs": [f"{c}-{n}"]}, 8, 120).start()
    wait_until(lambda: len(load.outcomes) >= 100, 60, "load to be under way")
    os.kill(helper.pid, signal.SIGKILL)
    wait_until(lambda: not _helpers(server), 30, "the helper to be gone")
    at_kill = len(load.outcomes)
    wait_until(lambda: len(load.outcomes) >= at_kill + 200, 60, "load served after the helper died")
    assert sorted(server.worker_pids("echo")) == workers  # the same processes serve on
    adopted = {psutil.Process(pid).ppid() for pid in workers}

    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in server.worker_pids("echo") and server.all_workers_ready(), 60, "a replacement")
    (new_helper,) = _helpers(server)
    at_replacement = len(load.outcomes)
    wait_until(lambda: len(load.outcomes) >= at_replacement + 100, 60, "load served after the replacement")
    load.stop()
    outcomes = load.join()
    statuses = by_status(outcomes)
    log = server.log()
    report("fork helper killed", {
        "requests sent": len(outcomes),
        "answered by status": statuses,
        "latency (all answered)": latency_figures(outcomes),
        "helper pid old -> new": (helper.pid, new_helper.pid),
        "workers' parent after the helper died": sorted(adopted),
        "worker pids before / after": (workers, sorted(server.worker_pids("echo"))),
    })  # fmt: skip
    # Killing the helper costs nothing; the worker killed afterwards may cost a retried batch
    # (retried on the other worker), never a failed request.
    assert statuses == {"200": len(outcomes)}, statuses
    assert adopted == {server.process.pid}  # re-parented to the main process (a subreaper)
    assert new_helper.pid != helper.pid
    assert f"(pid {victim}) died: killed by SIGKILL" in log  # its real status, read by the main process
    assert log.count(" died: ") == 1
    assert_clean_log(log)


def test_workers_exit_when_the_main_process_is_sigkilled_even_after_their_helper_died(serve) -> None:
    """A worker stuck in predict never reads its channel's end: only its watch on the main process
    can end it."""
    server = serve(
        """
        models:
          - {name: faulty, handler: "{HANDLERS}:Faulty", workers_per_device: 2, request_timeout_ms: 60000}
        """
    )
    (helper,) = _helpers(server)
    workers = server.worker_pids("faulty")
    os.kill(helper.pid, signal.SIGKILL)
    wait_until(lambda: not _helpers(server), 30, "the helper to be gone")
    hung = threading.Thread(target=lambda: _post_ignoring_errors(server, "hang"), daemon=True)
    hung.start()
    busy = lambda: any(w["busy"] for w in server.models()["faulty"]["workers"])  # noqa: E731
    wait_until(busy, 30, "a worker to be stuck in predict")
    server.process.kill()
    server.process.wait(30)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(lambda: all(gone(pid) for pid in workers), 30, "every worker to exit with the main process")
    log = server.log()
    by_watch, by_channel_end = log.count("the main process (pid"), log.count("the main process closed the channel")
    assert by_watch >= 1  # the stuck one can only have seen it by its watch
    assert by_watch + by_channel_end >= 2  # the idle one by either, whichever saw it first
    assert_clean_log(log)


def _post_ignoring_errors(server: RunningServer, item: str) -> None:
    try:
        server.post("/models/faulty/predict", {"inputs": [item]})
    except httpx.HTTPError:
        pass  # the server is killed while this waits
