"""Priorities against a real inferd: the only worker is held busy by a gated handler while
requests queue behind it, then the order the worker ran them in is read from their answers."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import HANDLERS, RunningServer, free_port, start_server, wait_until

grpcclient = pytest.importorskip("tritonclient.grpc")
import numpy as np  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

RANGE = "from 1 (highest) to 3 (lowest), or 0 for the model's default (2)"


def config(gate: Path, grpc_port: int, promote_after_ms: float) -> str:
    return f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}, drain_timeout_s: 10}}
models:
  - name: gated
    handler: "{HANDLERS}:Turns"
    handler_args: {{gate: "{gate}"}}
    outputs: [{{name: output, datatype: BYTES, shape: [-1]}}]
    request_timeout_ms: 120000
    priority_promote_after_ms: {promote_after_ms}
"""


class Gate:
    """A server whose `gated` model (the Turns handler) holds its worker on the item "hold" until `open()`."""

    def __init__(self, tmp_path: Path, promote_after_ms: float) -> None:
        self.path = tmp_path / "gate"
        self.grpc_port = free_port()
        self.server = start_server(tmp_path, config(self.path, self.grpc_port, promote_after_ms))
        self.pool = ThreadPoolExecutor(16)
        self.sent: list[Future[str]] = []

    def hold(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sent.append(self.pool.submit(native, self.server, "hold", {}))
        wait_until(lambda: any(w["busy"] for w in self.server.models()["gated"]["workers"]), 30, "the worker busy")

    def queue(self, send: Callable[[], str]) -> Future[str]:
        """Send one request and wait until it is queued, so that arrivals keep this order."""
        depth = self.queue_depth() + 1
        answer = self.pool.submit(send)
        self.sent.append(answer)
        wait_until(lambda: self.queue_depth() >= depth, 30, f"{depth} request(s) queued")
        return answer

    def queue_depth(self) -> int:
        return int(self.server.models()["gated"]["queue_depth"])

    def open(self) -> list[str]:
        """Release the worker; each answer's item, in the order the worker ran them."""
        self.path.touch()
        answers = [future.result(timeout=60) for future in self.sent]
        self.sent = []
        return [item for item, _ in sorted((a.split("#") for a in answers), key=lambda pair: int(pair[1]))]

    def close(self) -> None:
        self.path.touch()
        self.pool.shutdown(wait=True)
        self.server.stop()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    gate = Gate(tmp_path, promote_after_ms=100_000)  # nothing is promoted within a test
    yield gate
    gate.close()
    assert_clean_log(gate.server.log())


def native(server: RunningServer, item: str, headers: dict[str, str]) -> str:
    answer = httpx.post(f"{server.url}/models/gated/predict", json={"inputs": [item]}, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["outputs"][0])


def v2(server: RunningServer, item: str, priority: int | None) -> str:
    body: dict[str, object] = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": [item]}]}
    if priority is not None:
        body["parameters"] = {"priority": priority}
    answer = httpx.post(f"{server.url}/v2/models/gated/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["outputs"][0]["data"][0])


def grpc(port: int, item: str, priority: int) -> str:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        given = grpcclient.InferInput("input", [1], "BYTES")
        given.set_data_from_numpy(np.array([item.encode()], dtype=np.object_))
        result = client.infer("gated", [given], priority=priority)
        return str(result.as_numpy("output")[0].decode())


def test_the_queue_serves_higher_priorities_first_fifo_within_a_level(gate: Gate) -> None:
    server = gate.server
    gate.hold()
    gate.queue(lambda: native(server, "low-1", {"X-Priority": "3"}))
    gate.queue(lambda: v2(server, "default-1", None))
    gate.queue(lambda: v2(server, "high-1", 1))
    gate.queue(lambda: grpc(gate.grpc_port, "low-2", 3))
    gate.queue(lambda: native(server, "high-2", {"X-Priority": "1"}))
    gate.queue(lambda: native(server, "default-2", {"X-Priority": "0"}))
    gate.queue(lambda: grpc(gate.grpc_port, "high-3", 1))
    gate.queue(lambda: native(server, "low-3", {"X-Priority": "3"}))
    assert gate.open() == ["hold", "high-1", "high-2", "high-3", "default-1", "default-2", "low-1", "low-2", "low-3"]


def test_requests_without_a_priority_keep_their_arrival_order(gate: Gate) -> None:
    server = gate.server
    gate.hold()
    for n in range(6):
        gate.queue(lambda n=n: native(server, f"r{n}", {}))  # type: ignore[misc]
    assert gate.open() == ["hold", "r0", "r1", "r2", "r3", "r4", "r5"]


def test_a_request_that_waited_past_the_limit_goes_first(tmp_path: Path) -> None:
    gate = Gate(tmp_path, promote_after_ms=300)
    try:
        server = gate.server
        gate.hold()
        queued_at = time.monotonic()
        gate.queue(lambda: native(server, "low", {"X-Priority": "3"}))
        wait_until(lambda: time.monotonic() - queued_at > 0.4, 30, "the low request to wait past 300 ms")
        gate.queue(lambda: native(server, "high", {"X-Priority": "1"}))
        assert gate.open() == ["hold", "low", "high"]
        promoted = re.search(
            r'^inferd_requests_promoted_total\{model="gated"\} (\S+)$', server.get("/metrics").text, re.M
        )
        assert promoted is not None and float(promoted.group(1)) >= 1
    finally:
        gate.close()
    assert_clean_log(server.log())


def test_bad_priorities_are_400s_naming_the_value_and_the_range(gate: Gate) -> None:
    server = gate.server
    for value in ("4", "-1", "urgent"):
        answer = httpx.post(f"{server.url}/models/gated/predict", json={"inputs": ["x"]}, headers={"X-Priority": value})
        assert answer.status_code == 400
        assert answer.json()["error"] == (
            f"the X-Priority header: {value!r} is not a priority of model 'gated'; give an integer {RANGE}"
        )
    for priority in (7, "high", True):
        body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
                "parameters": {"priority": priority}}  # fmt: skip
        answer = httpx.post(f"{server.url}/v2/models/gated/infer", json=body)
        assert answer.status_code == 400
        assert answer.json()["error"].startswith(f"parameters.priority: {priority!r} is not a priority of model")
    with pytest.raises(InferenceServerException) as caught:
        grpc(gate.grpc_port, "x", 9)
    assert "StatusCode.INVALID_ARGUMENT" in str(caught.value.status()) and RANGE in caught.value.message()
