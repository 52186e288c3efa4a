"""Handlers whose predict is `async def`, served for real: one worker holds up to max_concurrency
batches at once, answers reach their own requests, a worker killed while holding several batches
loses none of them, a hung batch still gets its worker replaced, and max_concurrency on a plain
predict is refused by `validate` and by `serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.chaos.logs import assert_clean_log
from tests.conftest import HANDLERS, RunningServer, wait_until

Serve = Callable[..., RunningServer]

WAITS = """
models:
  - {name: wait, handler: "{HANDLERS}:AsyncWait", handler_args: {wait_s: 0.1}, max_concurrency: 10}
  - {name: batched, handler: "{HANDLERS}:AsyncWait", max_concurrency: 4, max_batch_size: 8}
  - {name: one, handler: "{HANDLERS}:AsyncWait", handler_args: {wait_s: 0.05}}
"""


def _item(answer: httpx.Response) -> object:
    assert answer.status_code == 200, answer.text
    return answer.json()["outputs"][0]["item"]


def test_ten_waits_of_100_ms_on_one_worker_overlap(serve: Serve) -> None:
    server = serve(WAITS)
    with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(10) as pool:

        def post(n: int) -> httpx.Response:
            return client.post("/models/wait/predict", json={"inputs": [f"request-{n}"]})

        list(pool.map(post, range(10)))  # opens the ten connections the timed round reuses
        started = time.monotonic()
        answers = list(pool.map(post, range(10)))
        elapsed_s = time.monotonic() - started
    assert [_item(a) for a in answers] == [f"request-{n}" for n in range(10)]
    assert len({a.json()["outputs"][0]["pid"] for a in answers}) == 1  # one worker
    assert max(a.json()["outputs"][0]["most_in_flight"] for a in answers) > 1
    # One after another would take at least a second; overlapped, about 0.1 s plus ten round trips
    # on a machine the other test processes share.
    assert elapsed_s < 0.9
    assert_clean_log(server.log())


def test_batched_requests_get_their_own_outputs_and_one_batch_at_a_time_without_max_concurrency(
    serve: Serve,
) -> None:
    server = serve(WAITS)
    requests = [[f"r{n}-{i}" for i in range(n % 3 + 1)] for n in range(24)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda items: server.post("/models/batched/predict", {"inputs": items}), requests))
        alone = list(pool.map(lambda n: server.post("/models/one/predict", {"inputs": [n]}), range(4)))
    for items, answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        assert [output["item"] for output in answer.json()["outputs"]] == items
    assert [_item(a) for a in alone] == list(range(4))
    assert {a.json()["outputs"][0]["most_in_flight"] for a in alone} == {1}  # max_concurrency 1: in turn
    assert_clean_log(server.log())


def _batch_count(server: RunningServer, model: str) -> float:
    name = f'inferd_batch_size_count{{model="{model}"}}'
    line = next(line for line in server.get("/metrics").text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_a_worker_killed_holding_several_batches_loses_none(serve: Serve, tmp_path: Path) -> None:
    release = tmp_path / "release"
    server = serve(f"""
models:
  - name: wait
    handler: "{{HANDLERS}}:AsyncWait"
    handler_args: {{release: "{release}"}}
    max_concurrency: 4
    workers_per_device: 2
""")

    def held() -> list[int]:
        return [w["batches"] for w in server.models()["wait"]["workers"] if w["state"] == "ready"]

    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(server.post, "/models/wait/predict", {"inputs": [f"request-{n}"]}) for n in range(8)]
        wait_until(lambda: held() == [4, 4], 30, "both workers to hold four batches each")
        victim = server.models()["wait"]["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "retrying its" in server.log(), 30, "the killed worker's batches to be requeued")
        release.touch()
        answers = [f.result() for f in pending]
    assert [_item(a) for a in answers] == [f"request-{n}" for n in range(8)]
    assert victim not in {a.json()["outputs"][0]["pid"] for a in answers}
    assert server.log().count("retrying its 1 request(s) once") == 4  # each batch it held, once
    assert _batch_count(server, "wait") == 8 + 4  # and each of them was dispatched exactly once more
    assert_clean_log(server.log())


def test_a_hung_batch_gets_its_worker_replaced_while_the_others_are_answered(serve: Serve) -> None:
    server = serve("""
models:
  - {name: wait, handler: "{HANDLERS}:AsyncWait", max_concurrency: 4, request_timeout_ms: 1500}
""")
    before = server.worker_pids("wait")
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(server.post, "/models/wait/predict", {"inputs": ["hang"]})
        wait_until(lambda: server.models()["wait"]["workers"][0]["batches"] == 1, 30, "the hung batch to run")
        assert _item(server.post("/models/wait/predict", {"inputs": ["beside"]})) == "beside"
        assert hung.result().status_code == 504
    wait_until(lambda: server.worker_pids("wait") not in ([], before), 30, "the hung worker's replacement")
    assert "killing worker wait" in server.log()
    assert_clean_log(server.log())


def _inferd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_validate_refuses_max_concurrency_without_an_async_predict(tmp_path: Path) -> None:
    config = tmp_path / "inferd.yaml"
    config.write_text(f"""
models:
  - {{name: plain, handler: "{HANDLERS}:Echo", max_concurrency: 4}}
  - {{name: file, path: tiny.pt, max_concurrency: 2}}
  - {{name: fine, handler: "{HANDLERS}:AsyncWait", max_concurrency: 4}}
  - {{name: chain, pipeline: [fine], max_concurrency: 2}}
""")
    result = _inferd("validate", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    problems = [line.removeprefix(f"{config}: ") for line in result.stderr.splitlines()[1:]]
    assert problems == [
        "models[0].max_concurrency: 4 batches at once need a predict that is 'async def' (one that awaits I/O); "
        "Echo.predict is a plain function: make it async or remove max_concurrency",
        "models[1].max_concurrency: 2 batches at once need a handler whose predict is 'async def' "
        "(this is a model file); remove max_concurrency",
        "models[3].max_concurrency: a pipeline has no workers of its own; set max_concurrency on the model of each step",
    ]


def test_serve_refuses_max_concurrency_on_a_plain_predict(serve: Serve) -> None:
    server = serve('models:\n  - {name: plain, handler: "{HANDLERS}:Echo", max_concurrency: 4}\n', wait=False)
    assert server.process.wait(60) == 3
    assert "model 'plain' failed to load: StartupError: max_concurrency: 4 batches at once" in server.log()
    assert_clean_log(server.log())
