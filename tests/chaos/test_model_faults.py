"""A model that raises on one request, a hung worker, and a model whose workers keep crashing."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.chaos.load import report
from tests.chaos.logs import assert_clean_log
from tests.conftest import wait_until

FAULTY = """
models:
  - name: faulty
    handler: {HANDLERS}:Faulty
    max_batch_size: 5  # the five concurrent requests below must share one batch: it goes when full,
    batch_timeout_ms: 1000  # and a wide window lets a request slowed by a loaded machine still join
    batch_wait: fixed
    request_timeout_ms: 1500
"""


def test_one_bad_request_fails_alone_and_a_hung_worker_is_replaced(serve) -> None:
    server = serve(FAULTY)
    items = ["a", "b", "bad", "c", "d"]
    with ThreadPoolExecutor(len(items)) as pool:
        answers = list(pool.map(lambda item: server.post("/models/faulty/predict", {"inputs": [item]}), items))
    for item, answer in zip(items, answers):
        if item == "bad":
            assert answer.status_code == 422 and "ValueError: the item 'bad' is not allowed" in answer.json()["error"]
        else:
            assert answer.status_code == 200 and answer.json()["outputs"][0]["item"] == item
    assert "batch of 5 requests raised" in server.log()  # they did share one batch

    before = server.worker_pids("faulty")
    started = time.monotonic()
    hung = server.post("/models/faulty/predict", {"inputs": ["hang"]})
    timed_out_s = time.monotonic() - started
    assert hung.status_code == 504 and "request_timeout_ms" in hung.json()["error"]
    wait_until(lambda: server.worker_pids("faulty") not in ([], before), 30, "the hung worker's replacement")
    replaced_s = time.monotonic() - started
    after = server.post("/models/faulty/predict", {"inputs": ["after"]})
    assert after.status_code == 200 and after.json()["outputs"][0]["pid"] not in before
    assert "killing worker faulty" in server.log()
    report("model faults", {
        "batch of 5 with one bad item": [a.status_code for a in answers],
        "hung batch -> 504 s (request_timeout_ms 1500)": round(timed_out_s, 2),
        "hung batch -> replacement ready s": round(replaced_s, 2),
        "worker pid before / after": (before, server.worker_pids("faulty")),
    })  # fmt: skip
    assert_clean_log(server.log())


def test_a_crash_looping_model_is_unavailable_and_recovers_by_itself(serve, tmp_path: Path) -> None:
    marker = tmp_path / "broken-weights"
    server = serve(
        f"""
        models:
          - name: flaky
            handler: {{HANDLERS}}:FailsToLoadWhileMarked
            handler_args: {{marker: {marker}}}
          - name: echo
            handler: {{HANDLERS}}:Echo
        """
    )
    marker.touch()
    started = time.monotonic()
    os.kill(server.worker_pids("flaky")[0], signal.SIGKILL)
    unavailable = lambda: server.get("/readyz").json()["models"]["flaky"] == "unavailable"  # noqa: E731
    wait_until(unavailable, 60, "the model to be marked unavailable")
    unavailable_s = time.monotonic() - started
    readiness = server.get("/readyz").json()
    refused = server.post("/models/flaky/predict", {"inputs": ["x"]})
    assert readiness == {"ready": False, "models": {"flaky": "unavailable", "echo": "ready"}}
    assert refused.status_code == 503
    assert "unavailable" in refused.json()["error"] and "refusing to load while" in refused.json()["error"]
    assert server.models()["flaky"]["reason"].startswith("workers keep failing")
    assert server.post("/models/echo/predict", {"inputs": ["x"]}).status_code == 200  # the others serve on

    marker.unlink()
    healed = time.monotonic()
    wait_until(server.is_ready, 60, "the model to recover by itself")
    recovered_s = time.monotonic() - healed
    answer = server.post("/models/flaky/predict", {"inputs": ["x"]})
    assert answer.status_code == 200 and answer.json()["outputs"][0]["item"] == "x"
    failed_boots = server.log().count("refusing to load while")
    report("crash loop", {
        "kill -> unavailable s": round(unavailable_s, 2),
        "failed boots logged": failed_boots,
        "fixed -> ready again s": round(recovered_s, 2),
        "503 while unavailable": refused.json()["error"],
    })  # fmt: skip
    assert_clean_log(server.log())
