"""Pipelines served for real: chains and fan-outs over handler and tensor steps, raw bodies, v2
BYTES, batching across requests at every step, failures and deadlines named, a step's worker killed."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, start_server, wait_until

STEPS = Path(__file__).with_name("steps.py")

CHAIN = f"""
models:
  - {{name: parse, handler: {STEPS}:Parse, max_batch_size: 8}}
  - {{name: double, handler: {STEPS}:Scale, handler_args: {{factor: 2}}, max_batch_size: 8}}
  - {{name: triple, handler: {STEPS}:Scale, handler_args: {{factor: 3}}, max_batch_size: 8}}
  - {{name: total, handler: {STEPS}:Total, max_batch_size: 8}}
  - name: tiny
    path: {{MODELS}}/tiny.pt
    max_batch_size: 8
    inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]
  - {{name: chain, pipeline: [parse, double, total], max_batch_size: 4}}
  - {{name: tensor, pipeline: [parse, tiny, total]}}
  - name: both
    pipeline:
      - {{model: parse}}
      - {{model: double, after: parse}}
      - {{model: triple, after: parse}}
      - {{model: total, after: [double, triple]}}
  - {{name: straight, pipeline: [parse, tiny]}}
"""

Serve = Callable[..., RunningServer]


@pytest.fixture(scope="module")
def chain_server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("pipelines"), CHAIN)
    yield server
    assert server.stop() == 0


def test_a_chain_answers_json_and_raw_bodies(chain_server: RunningServer) -> None:
    assert chain_server.post("/models/chain/predict", {"inputs": "1,2,3"}).json() == {"outputs": 12.0}
    assert chain_server.post("/models/chain/predict", {"inputs": ["1", "2,2"]}).json() == {"outputs": [2.0, 8.0]}
    raw = httpx.post(
        chain_server.url + "/models/chain/predict",
        content=b"1,2,3",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 200, raw.text
    assert raw.json() == {"outputs": 12.0}
    assert_clean_log(chain_server.log())


def test_tensor_steps_take_stacked_items_and_give_rows(chain_server: RunningServer) -> None:
    vector = ",".join(str(i) for i in range(16))
    linear = torch.jit.load(str(Path(__file__).parents[2] / "models" / "tiny.pt"))
    with torch.inference_mode():
        expected = linear(torch.arange(16, dtype=torch.float32)[None]).numpy()
    answer = chain_server.post("/models/tensor/predict", {"inputs": vector}).json()
    assert answer["outputs"] == pytest.approx(float(expected.sum()), rel=1e-5)
    outputs = chain_server.post("/models/straight/predict", {"inputs": vector}).json()["outputs"]
    assert np.allclose(outputs, expected, rtol=1e-5)


def test_a_fan_out_joins_its_branches_by_name(chain_server: RunningServer) -> None:
    assert chain_server.post("/models/both/predict", {"inputs": "1,2,3"}).json() == {
        "outputs": {"double": 12.0, "triple": 18.0}
    }
    metrics = chain_server.get("/metrics").text
    for step in ("parse", "double", "triple", "total"):  # each branch timed as part of its pipeline
        assert _sample(metrics, f'inferd_pipeline_step_seconds_count{{model="both",step="{step}"}}') >= 1.0


def test_v2_takes_the_bytes_as_a_bytes_input(chain_server: RunningServer) -> None:
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["1,2,3"]}]}
    answer = chain_server.post("/v2/models/chain/infer", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [12.0]
    metadata = chain_server.get("/v2/models/chain").json()
    assert metadata["platform"] == "ensemble"
    assert chain_server.get("/v2/models/chain/config").status_code == 200
    assert chain_server.get("/v2/models/chain/ready").status_code == 200
    assert "/models/chain/predict" in chain_server.get("/openapi.json").json()["paths"]


def test_a_step_failure_names_the_step(chain_server: RunningServer) -> None:
    answer = chain_server.post("/models/chain/predict", {"inputs": "1,bad"})
    assert answer.status_code == 422  # the model refused this request's data
    assert answer.json()["error"].startswith("pipeline 'chain': step 'parse': model 'parse' failed: ValueError")
    raw_to_tensor = httpx.post(
        chain_server.url + "/models/tiny/predict", content=b"\x89PNG", headers={"Content-Type": "image/png"}
    )
    assert raw_to_tensor.status_code == 415
    assert "takes tensors as JSON" in raw_to_tensor.json()["error"]
    empty = httpx.post(chain_server.url + "/models/chain/predict", content=b"", headers={"Content-Type": "image/png"})
    assert empty.status_code == 400
    assert "body is empty" in empty.json()["error"]
    too_many = chain_server.post("/models/chain/predict", {"inputs": ["1"] * 5})
    assert too_many.status_code == 400
    assert_clean_log(chain_server.log())


def test_each_step_and_the_pipeline_keep_their_own_series(chain_server: RunningServer) -> None:
    series = [
        'inferd_requests_total{code="200",model="chain",protocol="http"}',
        'inferd_request_duration_seconds_count{model="chain",protocol="http"}',
        *(f'inferd_batch_size_count{{model="{step}"}}' for step in ("parse", "double", "total")),
        *(
            f'inferd_pipeline_step_seconds_count{{model="chain",step="{step}"}}'
            for step in ("parse", "double", "total")
        ),
    ]
    before = chain_server.get("/metrics").text
    chain_server.post("/models/chain/predict", {"inputs": "1"})
    after = chain_server.get("/metrics").text
    assert [_sample(after, name) - _sample(before, name, 0.0) for name in series] == [1.0] * len(series)
    assert _sample(after, 'inferd_batch_size_count{model="chain"}', 0.0) == 0.0  # a pipeline runs no batches itself
    described = chain_server.models()["chain"]
    assert [s["id"] for s in described["pipeline"]] == ["parse", "double", "total"]
    assert described["state"] == "ready"


def test_items_of_different_requests_batch_at_every_step(serve: Serve) -> None:
    server = serve(f"""
models:
  - {{name: parse, handler: {STEPS}:Parse, max_batch_size: 8, batch_wait: fixed, batch_timeout_ms: 400}}
  - name: facts
    handler: {STEPS}:Scale
    handler_args: {{facts: true}}
    max_batch_size: 8
    batch_wait: fixed
    batch_timeout_ms: 400
  - {{name: chain, pipeline: [parse, facts]}}
""")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: server.post("/models/chain/predict", {"inputs": "1"}), range(8)))
    assert all(a.status_code == 200 for a in answers)
    assert max(a.json()["outputs"]["batch_size"] for a in answers) > 1
    metrics = server.get("/metrics").text
    parse_batches = _sample(metrics, 'inferd_batch_size_count{model="parse"}')
    assert parse_batches < 8  # the first step batched requests too


def test_the_pipeline_deadline_covers_every_step(serve: Serve) -> None:
    server = serve(f"""
models:
  - {{name: parse, handler: {STEPS}:Parse}}
  - {{name: slow, handler: {STEPS}:Scale, handler_args: {{delay_s: 2}}}}
  - {{name: chain, pipeline: [parse, slow], request_timeout_ms: 300}}
""")
    answer = server.post("/models/chain/predict", {"inputs": "1"})
    assert answer.status_code == 504
    assert answer.json()["error"] == "pipeline 'chain' did not answer within 300 ms (request_timeout_ms)"
    assert_clean_log(server.log())


def test_a_step_worker_killed_under_load_is_retried(serve: Serve) -> None:
    server = serve(f"""
models:
  - {{name: parse, handler: {STEPS}:Parse, max_batch_size: 4}}
  - name: slow
    handler: {STEPS}:Scale
    handler_args: {{delay_s: 0.05, factor: 2}}
    workers_per_device: 2
    max_batch_size: 4
  - {{name: total, handler: {STEPS}:Total, max_batch_size: 4}}
  - {{name: chain, pipeline: [parse, slow, total]}}
""")
    victim = server.worker_pids("slow")[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(server.post, "/models/chain/predict", {"inputs": "1,2"}) for _ in range(64)]
        wait_until(lambda: sum(f.done() for f in pending) >= 8, 60, "some answers before the kill")
        os.kill(victim, signal.SIGKILL)
        answers = [f.result() for f in pending]
    assert [a.status_code for a in answers] == [200] * 64
    assert all(a.json() == {"outputs": 6.0} for a in answers)
    wait_until(lambda: len(server.worker_pids("slow")) == 2, 60, "the killed worker to be replaced")


def _sample(metrics: str, name: str, default: float | None = None) -> float:
    line = next((line for line in metrics.splitlines() if line.startswith(name + " ")), None)
    if line is None and default is not None:
        return default
    assert line is not None, f"no sample {name}"
    return float(line.split()[-1])


def test_a_client_that_leaves_cancels_the_steps_still_queued(serve: Serve) -> None:
    server = serve(f"""
models:
  - {{name: parse, handler: {STEPS}:Parse}}
  - {{name: slow, handler: {STEPS}:Scale, handler_args: {{delay_s: 1.5}}}}
  - {{name: chain, pipeline: [parse, slow]}}
""")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(server.post, "/models/chain/predict", {"inputs": "1"})
        wait_until(lambda: server.models()["slow"]["workers"][0]["busy"], 30, "the first request to hold the slow step")
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + "/models/chain/predict", json={"inputs": "2"}, timeout=0.5)
        cancelled = 'inferd_requests_cancelled_total{model="slow"}'
        wait_until(lambda: _sample(server.get("/metrics").text, cancelled, 0.0) == 1.0, 30, "the step to be cancelled")
        assert first.result().status_code == 200
    assert _sample(server.get("/metrics").text, 'inferd_batch_size_count{model="slow"}') == 1.0  # never computed
    assert_clean_log(server.log())
