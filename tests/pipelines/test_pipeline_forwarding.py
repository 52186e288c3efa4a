"""A step's big output goes on to the next step's worker as the segment its worker made: served for
real, through a handler step and a tensor step, with concurrent requests whose images must not mix
(a segment is reused only once no worker views it)."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, start_server, wait_until

STEPS = Path(__file__).with_name("steps.py")
IMAGE = 3 * 224 * 224


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("forwarding")
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(folder / "identity.pt"))
    server = start_server(
        folder,
        f"""
models:
  - {{name: parse, handler: {STEPS}:Parse, max_batch_size: 8}}
  - {{name: fill, handler: {STEPS}:Fill, max_batch_size: 8, workers_per_device: 2}}
  - name: identity
    path: {folder}/identity.pt
    max_batch_size: 8
    workers_per_device: 2
    inputs: [{{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}}]
  - {{name: total, handler: {STEPS}:Total, max_batch_size: 8}}
  - {{name: handlers, pipeline: [parse, fill, total]}}
  - {{name: tensor, pipeline: [parse, fill, identity, total]}}
""",
    )
    yield server
    assert server.stop() == 0


def tensor_bytes(server: RunningServer, model: str, path: str) -> float:
    pattern = rf'^inferd_channel_bytes_total{{direction="to_worker",model="{model}",path="{path}"}} (\S+)$'
    found = re.search(pattern, server.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("pipeline", ["handlers", "tensor"])
def test_a_big_output_reaches_the_next_worker_as_its_makers_segment(server: RunningServer, pipeline: str) -> None:
    taker = "total" if pipeline == "handlers" else "identity"
    forwarded_before, copied_before = tensor_bytes(server, taker, "forwarded"), tensor_bytes(server, taker, "segment")
    assert server.post(f"/models/{pipeline}/predict", {"inputs": "1,2,3"}).json() == {"outputs": 6.0 * IMAGE}
    assert tensor_bytes(server, taker, "forwarded") - forwarded_before == IMAGE * 4
    assert tensor_bytes(server, taker, "segment") == copied_before  # the main process made no copy


@pytest.mark.parametrize("pipeline", ["handlers", "tensor"])
def test_concurrent_requests_each_get_their_own_image(server: RunningServer, pipeline: str) -> None:
    def classify(n: int) -> float:
        answer = server.post(f"/models/{pipeline}/predict", {"inputs": f"{n},1"})
        assert answer.status_code == 200, answer.text
        return float(answer.json()["outputs"])

    numbers = list(range(96))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        totals = list(pool.map(classify, numbers))
    assert totals == [float((n + 1) * IMAGE) for n in numbers]
    assert_clean_log(server.log())


@pytest.mark.parametrize("victim", ["fill", "identity"])
def test_a_maker_or_taker_killed_under_load_loses_no_request(server: RunningServer, victim: str) -> None:
    killed = server.worker_pids(victim)[0]

    def classify(n: int) -> tuple[int, float | str]:
        answer = server.post("/models/tensor/predict", {"inputs": f"{n},1"})
        return answer.status_code, answer.json()["outputs"] if answer.status_code == 200 else answer.text

    numbers = list(range(64))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(classify, n) for n in numbers]
        wait_until(lambda: sum(f.done() for f in pending) >= 8, 60, "some answers before the kill")
        os.kill(killed, signal.SIGKILL)
        answers = [f.result() for f in pending]
    assert answers == [(200, float((n + 1) * IMAGE)) for n in numbers]
    wait_until(
        lambda: killed not in server.worker_pids(victim) and len(server.worker_pids(victim)) >= 1, 60, "a new worker"
    )
    made_by_killed = [
        name for name in os.listdir("/dev/shm") if re.fullmatch(rf"inferd-seg-\d+-{killed}-[mw]\d+", name)
    ]
    wait_until(lambda: not [n for n in made_by_killed if os.path.exists(f"/dev/shm/{n}")], 30, "its segments unlinked")
