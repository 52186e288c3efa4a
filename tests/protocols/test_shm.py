"""The system shared-memory extension with Triton's own helpers (`tritonclient.utils.shared_memory`)
and clients, over HTTP and gRPC, against a real inferd: regions registered, read and written,
refused when a reference is bad, left to their owner (the client) when inferd stops, and a batch
read from shared memory survives the death of the worker computing it.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import EXAMPLE_MODELS, RunningServer, free_port, start_server, wait_until

grpcclient = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as httpclient  # noqa: E402
import tritonclient.utils.shared_memory as shm  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ROWS = np.arange(32, dtype=np.float32).reshape(2, 16) / 7
NBYTES = ROWS.nbytes
SLOW_SUM = """
import time
from inferd import Handler

class SlowSum(Handler):
    def predict(self, items):
        time.sleep(float(self.handler_args.get("delay_s", 0)))
        return [[float(sum(item))] for item in items]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("shm")
    (folder / "slow_sum.py").write_text(SLOW_SUM)
    grpc_port = free_port()
    config = f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}, drain_timeout_s: 10}}
models:
  - name: tiny
    path: {EXAMPLE_MODELS}/tiny.pt
    max_batch_size: 32
    inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]
  - name: slow_sum
    handler: {folder}/slow_sum.py:SlowSum
    handler_args: {{delay_s: 2}}
    workers_per_device: 2
    max_batch_size: 4
    inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]
    outputs: [{{name: sum, datatype: FP32, shape: [-1, 1]}}]
"""
    running = start_server(folder, config)
    running.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield running
    assert running.stop() == 0, running.log()
    assert_clean_log(running.log())


@pytest.fixture
def regions() -> Iterator[dict[str, Any]]:
    """An input region holding ROWS and an empty output region, created as a client creates them."""
    tag = uuid.uuid4().hex[:8]
    made = {
        "input": shm.create_shared_memory_region(f"in-{tag}", f"/inferd-test-in-{tag}", NBYTES),
        "output": shm.create_shared_memory_region(f"out-{tag}", f"/inferd-test-out-{tag}", NBYTES),
        "tag": tag,
    }
    shm.set_shared_memory_region(made["input"], [ROWS])
    yield made
    shm.destroy_shared_memory_region(made["input"])
    shm.destroy_shared_memory_region(made["output"])


def expected(server: RunningServer) -> np.ndarray:
    return np.array(server.post("/models/tiny/predict", {"inputs": ROWS.tolist()}).json()["outputs"], np.float32)


def test_grpc_inputs_and_outputs_in_shared_memory(server: RunningServer, regions: dict[str, Any]) -> None:
    tag = regions["tag"]
    client = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    client.register_system_shared_memory(f"in-{tag}", f"/inferd-test-in-{tag}", NBYTES)
    client.register_system_shared_memory(f"out-{tag}", f"/inferd-test-out-{tag}", NBYTES)
    status = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert status[f"in-{tag}"]["byte_size"] == str(NBYTES)
    given = grpcclient.InferInput("input", [2, 16], "FP32")
    given.set_shared_memory(f"in-{tag}", NBYTES)
    wanted = grpcclient.InferRequestedOutput("output")
    wanted.set_shared_memory(f"out-{tag}", NBYTES)
    result = client.infer("tiny", [given], outputs=[wanted])
    answer = result.get_output("output")
    assert answer.parameters["shared_memory_region"].string_param == f"out-{tag}"
    written = shm.get_contents_as_numpy(regions["output"], np.float32, [2, 16])
    np.testing.assert_allclose(written, expected(server), rtol=1e-6)
    client.unregister_system_shared_memory(f"in-{tag}")
    assert f"in-{tag}" not in client.get_system_shared_memory_status(as_json=True).get("regions", {})
    client.unregister_system_shared_memory()
    assert not client.get_system_shared_memory_status(as_json=True).get("regions")
    client.close()


def test_http_inputs_and_outputs_in_shared_memory(server: RunningServer, regions: dict[str, Any]) -> None:
    tag = regions["tag"]
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    client.register_system_shared_memory(f"in-{tag}", f"/inferd-test-in-{tag}", NBYTES)
    client.register_system_shared_memory(f"out-{tag}", f"/inferd-test-out-{tag}", NBYTES, offset=0)
    names = {region["name"] for region in client.get_system_shared_memory_status()}
    assert {f"in-{tag}", f"out-{tag}"} <= names
    assert client.get_system_shared_memory_status(f"in-{tag}")[0]["key"] == f"/inferd-test-in-{tag}"
    given = httpclient.InferInput("input", [2, 16], "FP32")
    given.set_shared_memory(f"in-{tag}", NBYTES)
    wanted = httpclient.InferRequestedOutput("output")
    wanted.set_shared_memory(f"out-{tag}", NBYTES)
    result = client.infer("tiny", [given], outputs=[wanted])
    assert result.get_output("output")["parameters"]["shared_memory_region"] == f"out-{tag}"
    written = shm.get_contents_as_numpy(regions["output"], np.float32, [2, 16])
    np.testing.assert_allclose(written, expected(server), rtol=1e-6)
    client.unregister_system_shared_memory(f"in-{tag}")
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []
    client.close()


def grpc_refusal(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_bad_references_are_refused_and_the_server_goes_on(server: RunningServer, regions: dict[str, Any]) -> None:
    tag = regions["tag"]
    client = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    missing = grpc_refusal(lambda: client.register_system_shared_memory("nope", "/inferd-test-absent", 64))
    assert missing.status() == "StatusCode.INVALID_ARGUMENT" and "cannot open" in missing.message()
    too_big = grpc_refusal(lambda: client.register_system_shared_memory("big", f"/inferd-test-in-{tag}", NBYTES + 1))
    assert too_big.status() == "StatusCode.INVALID_ARGUMENT" and "do not fit" in too_big.message()
    escaping = grpc_refusal(lambda: client.register_system_shared_memory("up", "/../etc/passwd", 8))
    assert escaping.status() == "StatusCode.INVALID_ARGUMENT"
    client.register_system_shared_memory(f"in-{tag}", f"/inferd-test-in-{tag}", NBYTES)
    twice = grpc_refusal(lambda: client.register_system_shared_memory(f"in-{tag}", f"/inferd-test-in-{tag}", NBYTES))
    assert twice.status() == "StatusCode.ALREADY_EXISTS"

    def infer_with(region: str, byte_size: int, offset: int = 0) -> InferenceServerException:
        given = grpcclient.InferInput("input", [2, 16], "FP32")
        given.set_shared_memory(region, byte_size, offset)
        return grpc_refusal(lambda: client.infer("tiny", [given]))

    unknown = infer_with("unregistered", NBYTES)
    assert unknown.status() == "StatusCode.INVALID_ARGUMENT" and "no shared-memory region" in unknown.message()
    past_end = infer_with(f"in-{tag}", NBYTES, offset=4)
    assert past_end.status() == "StatusCode.INVALID_ARGUMENT" and "do not fit" in past_end.message()
    short = infer_with(f"in-{tag}", NBYTES - 4)
    assert short.status() == "StatusCode.INVALID_ARGUMENT"
    small_out = grpcclient.InferRequestedOutput("output")
    small_out.set_shared_memory(f"in-{tag}", 8)
    given = grpcclient.InferInput("input", [2, 16], "FP32")
    given.set_data_from_numpy(ROWS)
    tight = grpc_refusal(lambda: client.infer("tiny", [given], outputs=[small_out]))
    assert tight.status() == "StatusCode.INVALID_ARGUMENT" and "larger" in tight.message()
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    given_http = httpclient.InferInput("input", [2, 16], "FP32")
    given_http.set_shared_memory("unregistered", NBYTES)
    with pytest.raises(InferenceServerException) as caught:
        http.infer("tiny", [given_http])
    assert caught.value.status() == "400" and "no shared-memory region" in caught.value.message()
    client.unregister_system_shared_memory()
    assert client.infer("tiny", [given]).as_numpy("output").shape == (2, 16)  # still serving
    client.close()
    http.close()


def test_a_shared_memory_batch_survives_its_worker_dying(server: RunningServer, regions: dict[str, Any]) -> None:
    tag = regions["tag"]
    client = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    client.register_system_shared_memory(f"in-{tag}", f"/inferd-test-in-{tag}", NBYTES)
    client.register_system_shared_memory(f"out-{tag}", f"/inferd-test-out-{tag}", 8)
    given = grpcclient.InferInput("input", [2, 16], "FP32")
    given.set_shared_memory(f"in-{tag}", NBYTES)
    wanted = grpcclient.InferRequestedOutput("sum")
    wanted.set_shared_memory(f"out-{tag}", 8)
    outcome: list[object] = []
    call = threading.Thread(target=lambda: outcome.append(client.infer("slow_sum", [given], outputs=[wanted])))
    call.start()

    def busy_worker() -> int | None:
        busy = [w["pid"] for w in server.models()["slow_sum"]["workers"] if w["busy"]]
        return busy[0] if busy else None

    wait_until(lambda: busy_worker() is not None, 30, "a slow_sum worker to take the batch")
    os.kill(busy_worker() or 0, signal.SIGKILL)
    call.join(60)
    assert outcome, "the call did not return"
    assert "retrying its 1 request(s) once" in server.log()  # the batch really was lost with its worker
    sums = shm.get_contents_as_numpy(regions["output"], np.float32, [2, 1])
    np.testing.assert_allclose(sums.ravel(), ROWS.sum(axis=1), rtol=1e-5)
    client.unregister_system_shared_memory()
    client.close()


def test_inferd_leaves_client_regions_to_the_client(tmp_path: Path, example_models: Path) -> None:
    key = f"/inferd-test-kept-{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region("kept", key, NBYTES)
    grpc_port = free_port()
    running = start_server(
        tmp_path,
        f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}}}
models:
  - {{name: tiny, path: {EXAMPLE_MODELS}/tiny.pt, inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]}}
""",
    )
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.register_system_shared_memory("kept", key, NBYTES)  # registered, never unregistered
        client.close()
        main_pid = running.process.pid
        assert running.stop() == 0, running.log()
        assert os.path.exists("/dev/shm" + key)  # the owner is the client: inferd unmapped it, never unlinked it
        # Only this daemon's names: tests running beside this one make (and plant stale) segments of their own.
        left = {name for name in os.listdir("/dev/shm") if name.startswith(f"inferd-seg-{main_pid}-")}
        assert not left, f"inferd left {left} in /dev/shm"
    finally:
        running.process.kill() if running.process.poll() is None else None
        shm.destroy_shared_memory_region(handle)
    assert not os.path.exists("/dev/shm" + key)


def test_http_register_and_status_refusals_are_json_400s(server: RunningServer) -> None:
    register = f"{server.url}/v2/systemsharedmemory/region/r1/register"
    for body in (b"[]", b'{"byte_size": 8}', b'{"key": "/x", "byte_size": "8"}', b"not json"):
        answer = httpx.post(register, content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and "error" in answer.json(), (body, answer.text)
    missing = httpx.post(register, json={"key": "/inferd-test-absent", "byte_size": 8})
    assert missing.status_code == 400 and "cannot open" in missing.json()["error"]
    status = httpx.get(f"{server.url}/v2/systemsharedmemory/region/r1/status")
    assert status.status_code == 400 and "no shared-memory region named 'r1'" in status.json()["error"]
    wrong_method = httpx.get(register)
    assert wrong_method.status_code == 405
    assert httpx.post(f"{server.url}/v2/systemsharedmemory/region/r1/unregister").status_code == 200
