"""NVIDIA's own gRPC clients, `tritonclient.grpc` and its asyncio twin, used unchanged against a real
inferd serving Triton's GRPCInferenceService on `server.grpc_port`.

One inferd serves the tiny example model, an identity model over every numeric datatype and a slow
handler for the whole module; answers are compared with the native HTTP route's for the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.logs import assert_clean_log
from tests.conftest import EXAMPLE_MODELS, HANDLERS, RunningServer, free_port, start_server, wait_until

grpcclient = pytest.importorskip("tritonclient.grpc")
import grpc  # noqa: E402
import tritonclient.grpc.aio as aioclient  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

# Every numeric v2 datatype, with the numpy dtype tritonclient carries it in (BF16: its uint16 bits).
NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
IDENTITY_SOURCE = """
import torch
from typing import List

class Identity(torch.nn.Module):
    def forward(self, {args}) -> List[torch.Tensor]:
        return [{clones}]

torch.jit.script(Identity()).save({path!r})
"""


UPPER = """
from inferd import Handler

class Upper(Handler):
    def predict(self, items):
        return [item.upper() for item in items]
"""


def build_identity_model(path: Path) -> None:
    """A TorchScript model answering each of its inputs (one per numeric datatype) unchanged."""
    import subprocess
    import sys

    names = [name.lower() for name in NUMERIC]
    source = IDENTITY_SOURCE.format(
        args=", ".join(f"{n}: torch.Tensor" for n in names),
        clones=", ".join(f"{n}.clone()" for n in names),
        path=str(path),
    )
    script = path.with_suffix(".py")  # TorchScript reads the module's source from its file
    script.write_text(source)
    subprocess.run([sys.executable, str(script)], check=True)


def config_text(models_dir: Path, grpc_port: int) -> str:
    tensors = "\n".join(f"      - {{name: {n.lower()}, datatype: {n}, shape: [-1, 3]}}" for n in NUMERIC)
    outputs = tensors.replace("name: ", "name: out_")
    return f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}, drain_timeout_s: 10}}
models:
  - name: tiny
    path: {EXAMPLE_MODELS}/tiny.pt
    max_batch_size: 32
    inputs:
      - {{name: input, datatype: FP32, shape: [-1, 16]}}
  - name: identity
    path: {models_dir}/identity.pt
    max_batch_size: 8
    inputs:
{tensors}
    outputs:
{outputs}
  - name: upper
    handler: {models_dir}/upper.py:Upper
    max_batch_size: 8
    outputs: [{{name: upper, datatype: BYTES, shape: [-1]}}]
  - name: slow
    handler: {HANDLERS}:Echo
    handler_args: {{delay_s: 3}}
    max_batch_size: 4
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    models_dir = tmp_path_factory.mktemp("grpc-models")
    build_identity_model(models_dir / "identity.pt")
    (models_dir / "upper.py").write_text(UPPER)
    grpc_port = free_port()
    running = start_server(tmp_path_factory.mktemp("grpc"), config_text(models_dir, grpc_port))
    running.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield running
    assert running.stop() == 0, running.log()
    assert_clean_log(running.log())


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    yield triton
    triton.close()


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    given = grpcclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return given


def refused(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", model_version="1")
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "inferd"
    assert {"binary_tensor_data", "model_configuration", "system_shared_memory"} <= set(server["extensions"])
    tiny = client.get_model_metadata("tiny", as_json=True)
    assert tiny["versions"] == ["1"]
    assert tiny["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}]
    config = client.get_model_config("tiny", as_json=True)["config"]
    assert config["max_batch_size"] == 32
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["16"]}]


def test_infer_matches_the_native_route(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    rows = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    result = client.infer("tiny", [tensor("input", rows, "FP32")], request_id="req-7")
    native = server.post("/models/tiny/predict", {"inputs": rows.tolist()})
    assert native.status_code == 200, native.text
    np.testing.assert_allclose(result.as_numpy("output"), np.array(native.json()["outputs"]), rtol=1e-6)
    assert result.get_response().id == "req-7"


def identity_inputs() -> dict[str, np.ndarray]:
    values = np.array([[0, 1, 2], [3, 4, 5]])
    return {name: (values % 2 if name == "BOOL" else values).astype(dtype) for name, dtype in NUMERIC.items()}


def test_every_numeric_datatype_round_trips_raw(client: grpcclient.InferenceServerClient) -> None:
    arrays = identity_inputs()
    result = client.infer("identity", [tensor(n.lower(), a, n) for n, a in arrays.items()])
    for name, array in arrays.items():
        answered = result.as_numpy(f"out_{name.lower()}")
        assert answered.dtype == array.dtype and np.array_equal(answered, array), name


def test_bytes_travel_raw_and_typed(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    words = np.array([b"alpha", "b\u00e9ta".encode(), b""], dtype=object)
    result = client.infer("upper", [tensor("input", words, "BYTES")])
    assert result.get_output("upper").datatype == "BYTES"
    assert result.as_numpy("upper").tolist() == [b"ALPHA", "B\u00c9TA".encode(), b""]
    request = service_pb2.ModelInferRequest(model_name="upper")
    request.inputs.add(name="input", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"x", b"yz"])
    with grpc.insecure_channel(server.grpc_url) as channel:  # type: ignore[attr-defined]
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert answer.raw_output_contents[0] == b"\x01\x00\x00\x00X\x02\x00\x00\x00YZ"  # 4-byte lengths, as Triton


def typed_request(arrays: dict[str, np.ndarray]) -> service_pb2.ModelInferRequest:
    fields = {"BOOL": "bool_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
              "FP32": "fp32_contents", "FP64": "fp64_contents"}  # fmt: skip
    request = service_pb2.ModelInferRequest(model_name="identity")
    for name, array in arrays.items():
        field = fields.get(name, "uint_contents" if name.startswith("UINT") else "int_contents")
        entry = request.inputs.add(name=name.lower(), datatype=name, shape=array.shape)
        if name != "FP16":  # FP16 has no typed field: it must go raw
            getattr(entry.contents, field).extend(array.ravel().tolist())
    return request


def test_typed_contents_are_read_and_fp16_is_refused_without_raw(server: RunningServer) -> None:
    arrays = identity_inputs()
    with grpc.insecure_channel(server.grpc_url) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(typed_request(arrays))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 has no typed contents field" in caught.value.details()
        request = typed_request(arrays)
        fp16 = request.inputs[list(NUMERIC).index("FP16")]  # sent as FP32 instead: the model takes FP16 only
        fp16.datatype = "FP32"
        fp16.contents.fp32_contents.extend(arrays["FP16"].ravel().tolist())
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "datatype FP32 but the model takes FP16" in caught.value.details()


def test_typed_contents_answer_like_raw(server: RunningServer) -> None:
    rows = np.arange(32, dtype=np.float32).reshape(2, 16)
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 16]).contents.fp32_contents.extend(rows.ravel())
    with grpc.insecure_channel(server.grpc_url) as channel:  # type: ignore[attr-defined]
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    native = server.post("/models/tiny/predict", {"inputs": rows.tolist()}).json()["outputs"]
    typed = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 16)
    np.testing.assert_allclose(typed, np.array(native), rtol=1e-6)


async def test_the_asyncio_client_infers(server: RunningServer) -> None:
    rows = np.ones((3, 16), np.float32)
    async with aioclient.InferenceServerClient(server.grpc_url) as triton:  # type: ignore[attr-defined]
        assert await triton.is_server_ready()
        given = aioclient.InferInput("input", [3, 16], "FP32")
        given.set_data_from_numpy(rows)
        result = await triton.infer("tiny", [given], outputs=[aioclient.InferRequestedOutput("output")])
    assert result.as_numpy("output").shape == (3, 16)


def test_bad_requests_get_triton_status_codes(client: grpcclient.InferenceServerClient) -> None:
    rows = np.ones((2, 16), np.float32)
    missing = refused(lambda: client.infer("nope", [tensor("input", rows, "FP32")]))
    assert missing.status() == "StatusCode.NOT_FOUND" and "no model named 'nope'" in missing.message()
    version = refused(lambda: client.infer("tiny", [tensor("input", rows, "FP32")], model_version="2"))
    assert version.status() == "StatusCode.NOT_FOUND"
    shape = refused(lambda: client.infer("tiny", [tensor("input", np.ones((2, 15), np.float32), "FP32")]))
    assert shape.status() == "StatusCode.INVALID_ARGUMENT" and "does not match [-1, 16]" in shape.message()
    datatype = refused(lambda: client.infer("tiny", [tensor("input", rows.astype(np.float64), "FP64")]))
    assert datatype.status() == "StatusCode.INVALID_ARGUMENT"
    output = refused(
        lambda: client.infer("tiny", [tensor("input", rows, "FP32")], outputs=[grpcclient.InferRequestedOutput("x")])
    )
    assert output.status() == "StatusCode.INVALID_ARGUMENT" and "'x'" in output.message()
    too_many = refused(lambda: client.infer("tiny", [tensor("input", np.ones((33, 16), np.float32), "FP32")]))
    assert too_many.status() == "StatusCode.INVALID_ARGUMENT" and "max_batch_size" in too_many.message()
    unserved = refused(lambda: client.get_cuda_shared_memory_status())
    assert unserved.status() == "StatusCode.UNIMPLEMENTED"


def test_a_short_timeout_ends_the_wait_and_the_request(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    items = np.array([b"a"], dtype=object)
    late = refused(lambda: client.infer("slow", [tensor("input", items, "BYTES")], client_timeout=0.5))
    assert late.status() == "StatusCode.DEADLINE_EXCEEDED"

    def counted() -> bool:
        text = server.get("/metrics").text
        return any(
            line.startswith("inferd_requests_total") and 'model="slow"' in line and ('"504"' in line or '"499"' in line)
            for line in text.splitlines()
        )

    wait_until(counted, 30, "the timed-out call to be counted as 504 (or 499, if gRPC cancelled it first)")


REQUEST_SAMPLES = ("inferd_requests_total", "inferd_request_duration_seconds_count")


def request_counts(server: RunningServer) -> dict[tuple[str, str, str], float]:
    """(sample name, protocol, code) -> value of tiny's request series in /metrics."""
    counts = {}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") == "tiny" and sample.name in REQUEST_SAMPLES:
                counts[(sample.name, labels["protocol"], labels.get("code", ""))] = sample.value
    return counts


def test_request_series_name_the_protocol_each_request_came_by(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    before = request_counts(server)
    client.infer("tiny", [tensor("input", np.ones((1, 16), np.float32), "FP32")])
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]}
    assert server.post("/v2/models/tiny/infer", body).status_code == 200
    assert server.post("/v2/models/tiny/infer", body).status_code == 200
    after = request_counts(server)
    grown = {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}
    assert grown == {
        ("inferd_requests_total", "grpc", "200"): 1.0,
        ("inferd_requests_total", "http", "200"): 2.0,
        ("inferd_request_duration_seconds_count", "grpc", ""): 1.0,
        ("inferd_request_duration_seconds_count", "http", ""): 2.0,
    }


def test_a_stream_answers_each_request_in_order(client: grpcclient.InferenceServerClient) -> None:
    answers: list[object] = []
    client.start_stream(callback=lambda result, error: answers.append(error or result))
    try:
        for value in (1.0, 2.0):
            client.async_stream_infer("tiny", [tensor("input", np.full((1, 16), value, np.float32), "FP32")])
        client.async_stream_infer("tiny", [tensor("input", np.ones((1, 15), np.float32), "FP32")])
        wait_until(lambda: len(answers) == 3, 30, "three stream answers")
    finally:
        client.stop_stream()
    first, second, bad = answers
    assert not np.array_equal(first.as_numpy("output"), second.as_numpy("output"))  # type: ignore[attr-defined]
    assert isinstance(bad, InferenceServerException) and "does not match" in bad.message()


def test_api_keys_come_from_metadata(serve: Callable[..., RunningServer], example_models: Path) -> None:
    grpc_port = free_port()
    serve(
        f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}, auth: {{api_keys_env: TEST_GRPC_KEYS}}}}
models:
  - {{name: tiny, path: {EXAMPLE_MODELS}/tiny.pt, max_batch_size: 4, inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]}}
""",
        env={"TEST_GRPC_KEYS": "k1"},
        api_key="k1",
    )
    triton = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    rows = [tensor("input", np.ones((1, 16), np.float32), "FP32")]
    assert triton.is_server_live()  # health stays open, as over HTTP
    denied = refused(lambda: triton.infer("tiny", rows))
    assert denied.status() == "StatusCode.UNAUTHENTICATED" and "API key" in denied.message()
    wrong = refused(lambda: triton.infer("tiny", rows, headers={"authorization": "Bearer k2"}))
    assert wrong.status() == "StatusCode.UNAUTHENTICATED"
    assert triton.infer("tiny", rows, headers={"authorization": "Bearer k1"}).as_numpy("output").shape == (1, 16)
    assert triton.infer("tiny", rows, headers={"x-api-key": "k1"}).as_numpy("output").shape == (1, 16)
    triton.close()


def test_a_taken_grpc_port_stops_serve_before_any_worker(serve: Callable[..., RunningServer]) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        running = serve(
            f"""
server: {{host: 127.0.0.1, grpc_port: {port}}}
models:
  - {{name: tiny, path: {EXAMPLE_MODELS}/tiny.pt}}
""",
            wait=False,
        )
        assert running.process.wait(60) == 4
    assert f"127.0.0.1:{port} (server.grpc_port): port {port} is already in use" in running.log()
    assert "started worker" not in running.log()


SLOW_SUM = """
import time
from inferd import Handler

class SlowSum(Handler):
    def predict(self, items):
        time.sleep(float(self.handler_args.get("delay_s", 0)))
        return [[float(sum(item))] for item in items]
"""


def test_sigterm_drains_calls_in_flight_and_big_messages_are_refused(
    serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    import threading

    (tmp_path / "slow_sum.py").write_text(SLOW_SUM)
    grpc_port = free_port()
    running = serve(
        f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}, drain_timeout_s: 20, max_request_bytes: 65536}}
models:
  - name: slow_sum
    handler: {tmp_path}/slow_sum.py:SlowSum
    handler_args: {{delay_s: 2}}
    inputs: [{{name: input, datatype: FP32, shape: [-1, -1]}}]
    outputs: [{{name: sum, datatype: FP32, shape: [-1, 1]}}]
"""
    )
    triton = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    big = refused(lambda: triton.infer("slow_sum", [tensor("input", np.ones((1, 32768), np.float32), "FP32")]))
    assert big.status() == "StatusCode.RESOURCE_EXHAUSTED"
    answers: list[object] = []
    rows = np.ones((1, 4), np.float32)
    call = threading.Thread(target=lambda: answers.append(triton.infer("slow_sum", [tensor("input", rows, "FP32")])))
    call.start()
    wait_until(lambda: any(w["busy"] for w in running.models()["slow_sum"]["workers"]), 30, "the call to be computing")
    assert running.stop() == 0, running.log()
    call.join(30)
    assert answers and answers[0].as_numpy("sum").tolist() == [[4.0]]  # type: ignore[attr-defined]
    assert_clean_log(running.log())
    triton.close()


def test_grpc_port_needs_a_port_of_its_own(tmp_path: Path) -> None:
    from inferd.config import load_config
    from inferd.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(
        f"server: {{port: 8080, grpc_port: 8080}}\nmodels:\n  - {{name: tiny, path: {EXAMPLE_MODELS}/tiny.pt}}\n"
    )
    with pytest.raises(ConfigError, match=r"server: grpc_port \(8080\) must differ from port"):
        load_config(path)
    path.write_text(f"server: {{grpc_port: 8001}}\nmodels:\n  - {{name: tiny, path: {EXAMPLE_MODELS}/tiny.pt}}\n")
    assert load_config(path).server.grpc_port == 8001
