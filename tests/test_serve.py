"""`inferd serve` as a user runs it: a real process, real workers, real HTTP over loopback."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import wait_until

ECHO = """
models:
  - name: echo
    handler: {HANDLERS}:Echo
    max_batch_size: %(batch)d
    batch_timeout_ms: %(timeout_ms)d
    workers_per_device: %(workers)d
    handler_args: {delay_s: %(delay_s)s}
"""


def echo_config(batch: int = 8, timeout_ms: int = 5, workers: int = 1, delay_s: float = 0.0) -> str:
    return ECHO % {"batch": batch, "timeout_ms": timeout_ms, "workers": workers, "delay_s": delay_s}


def test_tensor_models_answer_like_torch_itself(serve, example_models: Path) -> None:
    torch = pytest.importorskip("torch")
    server = serve(
        """
        models:
          - {name: tiny, path: {MODELS}/tiny.pt, max_batch_size: 8, batch_timeout_ms: 2}
          - {name: exported, path: {MODELS}/classifier.pt2, max_batch_size: 4, busy_poll_us: 0}
        """
    )  # tiny polls (the default), exported never does
    rows = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    answer = server.post("/models/tiny/predict", {"inputs": rows.tolist()})
    assert answer.status_code == 200, answer.text
    expected = torch.jit.load(str(example_models / "tiny.pt"))(torch.from_numpy(rows)).detach().numpy()
    np.testing.assert_allclose(np.array(answer.json()["outputs"]), expected, rtol=1e-5, atol=1e-5)

    image = np.zeros((2, 3, 32, 32), np.float32)
    logits = server.post("/models/exported/predict", {"inputs": image.tolist()})
    assert logits.status_code == 200, logits.text
    assert np.array(logits.json()["outputs"]).shape == (2, 10)


def test_sequential_requests_run_as_batches_of_one(serve) -> None:
    server = serve(echo_config(batch=8, timeout_ms=5))
    for n in range(5):
        answer = server.post("/models/echo/predict", {"inputs": [f"item {n}"]})
        assert answer.json()["outputs"] == [answer.json()["outputs"][0] | {"item": f"item {n}", "batch_size": 1}]


def test_concurrent_requests_share_batches_up_to_the_limit(serve) -> None:
    server = serve(echo_config(batch=4, timeout_ms=200, delay_s=0.3))
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda n: server.post("/models/echo/predict", {"inputs": [n]}), range(12)))
    outputs = [a.json()["outputs"][0] for a in answers]
    assert [o["item"] for o in outputs] == list(range(12))  # each got its own item back
    sizes = [o["batch_size"] for o in outputs]
    assert max(sizes) == 4 and all(1 <= s <= 4 for s in sizes)


def test_a_lone_request_never_waits_for_company(serve) -> None:
    server = serve(echo_config(batch=64, timeout_ms=300))  # the timeout is a cap, not a wait
    for n in range(3):
        assert server.post("/models/echo/predict", {"inputs": [n]}).json()["outputs"][0]["batch_size"] == 1
    metrics = server.get("/metrics").text
    assert 'inferd_batch_wait_seconds_count{model="echo"} 3.0' in metrics
    assert 'inferd_batch_wait_seconds_sum{model="echo"} 0.0' in metrics


def test_each_response_holds_exactly_its_own_rows(serve, example_models: Path) -> None:
    server = serve(
        """
        models:
          - {name: tiny, path: {MODELS}/tiny.pt, max_batch_size: 16, batch_timeout_ms: 50}
        """
    )
    requests = [np.full((1 + n % 3, 16), float(n), np.float32) for n in range(18)]
    with ThreadPoolExecutor(18) as pool:
        answers = list(pool.map(lambda rows: server.post("/models/tiny/predict", {"inputs": rows.tolist()}), requests))
    single = {n: np.array(server.post("/models/tiny/predict", {"inputs": [[float(n)] * 16]}).json()["outputs"]) for n in range(18)}
    for n, (rows, answer) in enumerate(zip(requests, answers)):
        outputs = np.array(answer.json()["outputs"])
        assert outputs.shape == (len(rows), 16)
        np.testing.assert_allclose(outputs, np.repeat(single[n], len(rows), axis=0), rtol=1e-5, atol=1e-5)


def _allowed_cpus(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to give two workers disjoint shares")
def test_workers_are_pinned_to_disjoint_shares_with_matching_threads(serve) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    server = serve(echo_config(workers=2) + f'    cpu_affinity: "{cpus[0]},{cpus[1]}"\n')
    pids = server.worker_pids("echo")
    assert len(pids) == 2
    assert sorted(_allowed_cpus(pid) for pid in pids) == sorted(str(c) for c in cpus)  # as the kernel sees it
    seen = {}
    with ThreadPoolExecutor(8) as pool:
        for answer in pool.map(lambda n: server.post("/models/echo/predict", {"inputs": [n]}), range(40)):
            facts = answer.json()["outputs"][0]
            seen[facts["pid"]] = facts
    for facts in seen.values():
        assert len(facts["cpus"]) == 1 and facts["threads"] == 1 and facts["interop_threads"] == 1
        assert facts["omp"] == "1"


def test_a_killed_worker_is_replaced_and_its_batch_retried(serve) -> None:
    server = serve(echo_config(workers=2, batch=1, delay_s=1.0))
    before = set(server.worker_pids("echo"))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.post, "/models/echo/predict", {"inputs": ["survivor"]})
        wait_until(lambda: server.models()["echo"]["queue_depth"] == 0 and _busy_pid(server) is not None, 10, "dispatch")
        victim = _busy_pid(server)
        os.kill(victim, signal.SIGKILL)
        answer = pending.result(timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["item"] == "survivor"
    assert answer.json()["outputs"][0]["pid"] != victim
    wait_until(lambda: len(server.worker_pids("echo")) == 2, 30, "the replacement worker")
    after = set(server.worker_pids("echo"))
    assert victim not in after and len(after - before) == 1
    assert "killed by SIGKILL" in server.log()


def _busy_pid(server) -> int | None:
    busy = [w["pid"] for w in server.models()["echo"]["workers"] if w["busy"]]
    return busy[0] if busy else None


def test_sigterm_drains_accepted_requests_and_exits_zero(serve) -> None:
    server = serve(echo_config(batch=2, timeout_ms=1, delay_s=1.0))
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(server.post, "/models/echo/predict", {"inputs": [n]}) for n in range(4)]
        wait_until(lambda: "echo" in server.get("/metrics").text and _inflight(server) == 4, 10, "4 in flight")
        server.process.send_signal(signal.SIGTERM)
        answers = [p.result(timeout=30) for p in pending]
    assert [a.status_code for a in answers] == [200] * 4
    assert server.process.wait(30) == 0


def _inflight(server) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith('inferd_inflight_requests{model="echo"}'):
            return float(line.split()[-1])
    return 0.0


def test_no_worker_outlives_a_sigkilled_main_process(serve) -> None:
    server = serve(echo_config(workers=2))
    pids = server.worker_pids("echo")
    server.process.kill()
    server.process.wait(10)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 10, "workers to exit")


def test_a_model_that_cannot_load_stops_startup_with_a_clear_message(serve) -> None:
    server = serve(
        """
        models:
          - {name: broken, handler: "{HANDLERS}:CrashOnLoad"}
        """,
        wait=False,
    )
    assert server.process.wait(60) == 3
    log = server.log()
    assert "model 'broken' failed to load: RuntimeError: weights file is corrupt" in log
    assert log.count("started worker broken") == 1  # no restart loop


def test_a_missing_model_file_stops_startup(serve, tmp_path: Path) -> None:
    server = serve(f"models:\n  - {{name: gone, path: {tmp_path}/missing.pt}}\n", wait=False)
    assert server.process.wait(60) == 3
    assert "missing.pt: no such file" in server.log()


def test_the_main_process_never_loads_torch(serve) -> None:
    server = serve(echo_config())
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" not in maps
    assert all("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in server.worker_pids("echo"))


def test_bad_requests_get_clear_4xx_json_errors(serve) -> None:
    server = serve(
        """
        server: {host: 127.0.0.1, port: 1, max_request_bytes: 2000}
        models:
          - {name: tiny, path: {MODELS}/tiny.pt, max_batch_size: 4, inputs: [{name: input, shape: [-1, 16]}]}
        """
    )
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": [[1, 2]]}', 400, "does not match [-1, 16]"),
        (b'{"inputs": [[1, 2], [3]]}', 400, "not a rectangular array"),
        (b'{"inputs": [["a"] * 16]}'.replace(b'["a"] * 16', b'["a"]'), 400, "input 'input'"),
        (b'{"outputs": 1}', 400, '"inputs" field'),
        (b'{"inputs": ' + str([[0.0] * 16] * 5).encode() + b"}", 400, "at most 4 per batch"),
        (b'{"inputs": [' + b"1.0," * 1000 + b"1.0]}", 413, "max_request_bytes"),
    ]
    for body, status, words in cases:
        answer = httpx.post(server.url + "/models/tiny/predict", content=body, timeout=10)
        assert answer.status_code == status, (body[:40], answer.text)
        assert words in answer.json()["error"]
    assert server.post("/models/nope/predict", {"inputs": [1]}).status_code == 404
    assert httpx.get(server.url + "/models/tiny/predict").status_code == 405
    assert server.is_ready()


def test_a_full_queue_answers_429_at_once(serve) -> None:
    server = serve(
        """
        models:
          - name: echo
            handler: {HANDLERS}:Echo
            handler_args: {delay_s: 1.0}
            max_queue_size: 2
        """
    )
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: server.post("/models/echo/predict", {"inputs": [n]}), range(8)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(429) >= 4 and set(codes) <= {200, 429}
    rejected = next(a for a in answers if a.status_code == 429)
    assert rejected.headers["retry-after"] == "1" and "max_queue_size" in rejected.json()["error"]


def test_a_request_past_its_timeout_gets_504(serve) -> None:
    server = serve(
        """
        models:
          - name: echo
            handler: {HANDLERS}:Echo
            handler_args: {delay_s: 2.0}
            request_timeout_ms: 500
        """
    )
    answer = server.post("/models/echo/predict", {"inputs": ["slow"]})
    assert answer.status_code == 504 and "request_timeout_ms" in answer.json()["error"]


def test_health_readiness_and_model_listing(serve) -> None:
    server = serve(echo_config(workers=2))
    assert server.get("/healthz").json() == {"status": "alive"}
    assert server.get("/readyz").json() == {"ready": True, "models": {"echo": "ready"}}
    model = server.models()["echo"]
    assert model["state"] == "ready" and len(model["workers"]) == 2


def test_json_log_format_writes_one_object_per_line(serve) -> None:
    import json

    server = serve(
        """
        server: {host: 127.0.0.1, port: 1, log_format: json}
        models:
          - {name: echo, handler: "{HANDLERS}:Echo"}
        """
    )
    assert server.post("/models/echo/predict", {"inputs": ["x"]}).status_code == 200
    assert server.stop() == 0
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert {"time", "level", "logger", "message", "pid"} <= set(records[0])
    assert any(r.get("worker") == "echo cpu:0/0" and "ready in" in r["message"] for r in records)
    assert any("draining" in r["message"] for r in records)
