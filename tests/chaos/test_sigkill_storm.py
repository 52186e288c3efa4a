"""SIGKILL a random worker every second under 32 concurrent clients."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from tests.chaos.load import Load, by_status, latency_figures, report, rss_mib
from tests.chaos.logs import assert_clean_log
from tests.chaos.workers import ready_events, restart_times_s

STORM_S = 20.0
KILL_EVERY_S = 1.0
CLIENTS = 32
BACK_WITHIN_S = 2.0

CONFIG = """
models:
  - name: echo
    handler: {HANDLERS}:Echo
    handler_args: {delay_s: 0.005}
    workers_per_device: 2
    max_batch_size: 8
    batch_timeout_ms: 2
    request_timeout_ms: 30000
"""


def test_sigkill_a_random_worker_every_second_under_load(serve) -> None:
    server = serve(CONFIG)
    rss_before = rss_mib(server.process.pid)
    load = Load(server.url, "/models/echo/predict", lambda c, n: {"inputs": [f"{c}-{n}"]}, CLIENTS, STORM_S).start()
    kills = _kill_randomly(server, STORM_S, KILL_EVERY_S)
    outcomes = load.join()
    server.wait_ready(timeout_s=60)  # every slot back before the figures are read
    restarts = restart_times_s(kills, ready_events(server.log()))
    statuses = by_status(outcomes)
    measured = [t for t in restarts if t is not None]
    report("sigkill storm", {
        "requests sent": len(outcomes),
        "answered by status": statuses,
        "latency (all answered)": latency_figures(outcomes),
        "kills": len(kills),
        "restart times s (kill -> replacement Ready)": restarts,
        "restart max / median s": (max(measured, default=None), sorted(measured)[len(measured) // 2] if measured else None),
        "restarts within 2 s": f"{sum(t <= BACK_WITHIN_S for t in measured)}/{len(kills)}",
        "main RSS MiB before/after": (rss_before, rss_mib(server.process.pid)),
    })  # fmt: skip
    assert set(statuses) <= {"200", "503"}, statuses  # every request answered; failures only 503
    assert all(o.json["error"] for o in outcomes if o.status == 503)
    assert kills and len(measured) == len(kills), "a killed worker was never replaced"
    assert max(measured) <= BACK_WITHIN_S, f"workers back within {BACK_WITHIN_S} s: {restarts}"
    assert server.log().count(" died: killed by SIGKILL") == len(kills)  # one line per kill
    assert_clean_log(server.log())


def _kill_randomly(server, duration_s: float, every_s: float) -> list[tuple[float, str, int]]:
    """Every `every_s`, SIGKILL one ready worker at random; (time.time(), slot, pid) per kill."""
    kills: list[tuple[float, str, int]] = []
    started = time.monotonic()
    chooser = random.Random(os.getpid())
    tick = threading.Event()
    for n in range(int(duration_s / every_s)):
        tick.wait(max(0.0, started + n * every_s - time.monotonic()))  # on a fixed schedule
        ready = [w for w in server.models()["echo"]["workers"] if w["state"] == "ready"]
        if ready:
            victim = chooser.choice(ready)
            kills.append((time.time(), victim["slot"], victim["pid"]))
            os.kill(victim["pid"], signal.SIGKILL)
    return kills
