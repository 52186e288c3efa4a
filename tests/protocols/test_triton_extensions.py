"""Triton's extensions beyond infer, through `tritonclient.http` against a real inferd serving models
of Triton's test shapes: statistics, handlers with several named inputs and outputs (BYTES of any
shape), request parameters reaching a handler, classification, and Triton's error wording."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, start_server
from tests.test_validate import problems_of, run_inferd, write_config

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

LABELS = [f"class-{index}" for index in range(10)]

CONFIG = """
models:
  - name: simple
    handler: "{HANDLERS}:TritonSimple"
    max_batch_size: 8
    inputs:
      - {name: INPUT0, datatype: INT32, shape: [-1, 16]}
      - {name: INPUT1, datatype: INT32, shape: [-1, 16]}
    outputs:
      - {name: OUTPUT0, datatype: INT32, shape: [-1, 16]}
      - {name: OUTPUT1, datatype: INT32, shape: [-1, 16]}
  - name: simple_string
    handler: "{HANDLERS}:TritonSimple"
    max_batch_size: 8
    inputs:
      - {name: INPUT0, datatype: BYTES, shape: [-1, 16]}
      - {name: INPUT1, datatype: BYTES, shape: [-1, 16]}
    outputs:
      - {name: OUTPUT0, datatype: BYTES, shape: [-1, 16]}
      - {name: OUTPUT1, datatype: BYTES, shape: [-1, 16]}
  - name: three
    handler: "{HANDLERS}:Describe"
    max_batch_size: 8
    inputs:
      - {name: query, datatype: BYTES, shape: [-1]}
      - {name: documents, datatype: BYTES, shape: [-1, 2]}
      - {name: k, datatype: INT32, shape: [-1]}
    outputs:
      - {name: summary, datatype: BYTES, shape: [-1]}
  - name: four
    handler: "{HANDLERS}:Describe"
    max_batch_size: 8
    inputs:
      - {name: a, datatype: FP32, shape: [-1, 3]}
      - {name: b, datatype: BYTES, shape: [-1, 2, 2]}
      - {name: c, datatype: INT64, shape: [-1]}
      - {name: d, datatype: BOOL, shape: [-1]}
    outputs:
      - {name: summary, datatype: BYTES, shape: [-1]}
  - name: identity
    handler: "{HANDLERS}:Identity"
    max_batch_size: 8
    inputs:
      - {name: INPUT0, datatype: BYTES, shape: [-1]}
    outputs:
      - {name: OUTPUT0, datatype: BYTES, shape: [-1]}
  - name: simple_identity
    handler: "{HANDLERS}:Identity"
    max_batch_size: 8
    inputs:
      - {name: INPUT0, datatype: BYTES, shape: [-1, 16]}
    outputs:
      - {name: OUTPUT0, datatype: BYTES, shape: [-1, 16]}
  - name: classifier
    path: "{MODELS}/classifier.pt"
    max_batch_size: 16
    inputs:
      - {name: image, datatype: FP32, shape: [-1, 3, 32, 32], format: FORMAT_NCHW}
    outputs:
      - {name: logits, datatype: FP32, shape: [-1, 10], label_filename: labels.txt}
  - name: two_outputs_one_given
    handler: "{HANDLERS}:Identity"
    inputs:
      - {name: INPUT0, datatype: BYTES, shape: [-1]}
    outputs:
      - {name: OUTPUT0, datatype: BYTES, shape: [-1]}
      - {name: OUTPUT1, datatype: BYTES, shape: [-1]}
  - name: counted
    path: "{MODELS}/tiny.pt"
    max_batch_size: 32
    inputs:
      - {name: input, datatype: FP32, shape: [-1, 16]}
"""

BINARY_MODES = [pytest.param(False, id="json"), pytest.param(True, id="binary")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("triton")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    running = start_server(folder, CONFIG)
    yield running
    assert running.stop() == 0, running.log()
    assert_clean_log(running.log())


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield triton
    triton.close()


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    given = httpclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """One sample of /metrics, read as Prometheus text."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}} in /metrics")


# ---- several named inputs and outputs --------------------------------------------------------


@pytest.mark.parametrize("binary", BINARY_MODES)
def test_the_simple_model_adds_and_subtracts(client: httpclient.InferenceServerClient, binary: bool) -> None:
    left = np.arange(48, dtype=np.int32).reshape(3, 16)
    right = np.ones((3, 16), dtype=np.int32)
    wanted = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("OUTPUT0", "OUTPUT1")]
    inputs = [tensor("INPUT0", left, "INT32", binary), tensor("INPUT1", right, "INT32", binary)]
    result = client.infer("simple", inputs, outputs=wanted)
    assert result.as_numpy("OUTPUT0").dtype == np.int32
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), left + right)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), left - right)


@pytest.mark.parametrize("binary", BINARY_MODES)
def test_the_simple_string_model_takes_bytes_rows(client: httpclient.InferenceServerClient, binary: bool) -> None:
    numbers = np.arange(16, dtype=np.int32).reshape(1, 16)
    left = np.array([str(v).encode() for v in numbers.ravel()], dtype=np.object_).reshape(1, 16)
    right = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    inputs = [tensor("INPUT0", left, "BYTES", binary), tensor("INPUT1", right, "BYTES", binary)]
    result = client.infer("simple_string", inputs)  # no outputs named: every output, binary
    sums = result.as_numpy("OUTPUT0")
    assert sums.shape == (1, 16)
    assert [int(v) for v in sums.ravel()] == list(range(1, 17))
    assert [int(v) for v in result.as_numpy("OUTPUT1").ravel()] == list(range(-1, 15))


def test_native_route_takes_named_inputs_as_columns_or_rows(server: RunningServer) -> None:
    left, right = [list(range(16)), list(range(16, 32))], [[1] * 16, [2] * 16]
    columns = server.post("/models/simple/predict", {"inputs": {"INPUT0": left, "INPUT1": right}})
    assert columns.status_code == 200, columns.text
    assert columns.json()["outputs"]["OUTPUT0"] == [[a + b for a, b in zip(x, y)] for x, y in zip(left, right)]
    rows = server.post("/models/simple/predict", {"inputs": [{"INPUT0": left[1], "INPUT1": right[1]}]})
    assert rows.status_code == 200, rows.text
    assert rows.json()["outputs"] == [{"OUTPUT0": [v + 2 for v in left[1]], "OUTPUT1": [v - 2 for v in left[1]]}]
    missing = server.post("/models/simple/predict", {"inputs": {"INPUT0": left}})
    assert missing.status_code == 400 and "takes inputs ['INPUT0', 'INPUT1']" in missing.json()["error"]
    uneven = server.post("/models/simple/predict", {"inputs": {"INPUT0": left, "INPUT1": right[:1]}})
    assert uneven.status_code == 400 and "all of the same length" in uneven.json()["error"]


@pytest.mark.parametrize("binary", BINARY_MODES)
def test_three_named_inputs_with_bytes_reach_the_handler(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    query = np.array([b"what is inferd", "déjà vu".encode()], dtype=np.object_)
    documents = np.array([[b"a daemon", b"a cat"], [b"x", b"y"]], dtype=np.object_)
    k = np.array([1, 2], dtype=np.int32)
    inputs = [
        tensor("query", query, "BYTES", binary),
        tensor("documents", documents, "BYTES", binary),
        tensor("k", k, "INT32", binary),
    ]
    result = client.infer("three", inputs)
    summaries = [json.loads(text) for text in result.as_numpy("summary")]
    assert [s["item"] for s in summaries] == [
        {"query": "what is inferd", "documents": ["a daemon", "a cat"], "k": 1},
        {"query": "déjà vu", "documents": ["x", "y"], "k": 2},
    ]


@pytest.mark.parametrize("binary", BINARY_MODES)
def test_four_named_inputs_of_several_shapes_reach_the_handler(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    inputs = [
        tensor("a", np.array([[0.5, 1.5, 2.5]], dtype=np.float32), "FP32", binary),
        tensor("b", np.array([[[b"p", b"q"], [b"r", b"s"]]], dtype=np.object_), "BYTES", binary),
        tensor("c", np.array([2**40], dtype=np.int64), "INT64", binary),
        tensor("d", np.array([True]), "BOOL", binary),
    ]
    (summary,) = client.infer("four", inputs).as_numpy("summary")
    assert json.loads(summary)["item"] == {"a": [0.5, 1.5, 2.5], "b": [["p", "q"], ["r", "s"]], "c": 2**40, "d": True}


def test_a_named_input_of_the_wrong_datatype_is_refused(client: httpclient.InferenceServerClient) -> None:
    rows = np.zeros((1, 16), dtype=np.int32)
    with pytest.raises(InferenceServerException, match="datatype INT32 but the model takes BYTES") as refused:
        client.infer("simple_string", [tensor("INPUT0", rows, "INT32", True), tensor("INPUT1", rows, "INT32", True)])
    assert refused.value.status() == "400"


def test_a_single_input_handler_takes_bytes_as_before(client: httpclient.InferenceServerClient) -> None:
    texts = np.array([b"one", b"two"], dtype=np.object_)
    result = client.infer("identity", [tensor("INPUT0", texts, "BYTES", True)])
    assert result.as_numpy("OUTPUT0").tolist() == [b"one", b"two"]


def test_a_handler_that_leaves_out_a_declared_output_is_the_servers_fault(
    client: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="each output must be a dict of them") as broken:
        client.infer("two_outputs_one_given", [tensor("INPUT0", np.array([b"x"], dtype=np.object_), "BYTES", True)])
    assert broken.value.status() == "500"


# ---- parameters ------------------------------------------------------------------------------


def test_request_parameters_reach_the_handler(client: httpclient.InferenceServerClient) -> None:
    inputs = [
        tensor("query", np.array([b"q"], dtype=np.object_), "BYTES", True),
        tensor("documents", np.array([[b"d0", b"d1"]], dtype=np.object_), "BYTES", True),
        tensor("k", np.array([3], dtype=np.int32), "INT32", True),
    ]
    result = client.infer("three", inputs, parameters={"temperature": 0.5, "mode": "fast"}, priority=1)
    (summary,) = result.as_numpy("summary")
    assert json.loads(summary)["request"] == {"temperature": 0.5, "mode": "fast"}  # priority is the server's


def test_output_and_native_parameters_reach_the_handler(server: RunningServer) -> None:
    body = {
        "inputs": [
            {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["q"]},
            {"name": "documents", "datatype": "BYTES", "shape": [1, 2], "data": ["d0", "d1"]},
            {"name": "k", "datatype": "INT32", "shape": [1], "data": [3]},
        ],
        "parameters": {"lang": "en"},
        "outputs": [{"name": "summary", "parameters": {"max_chars": 80, "binary_data": False}}],
    }
    answer = server.post("/v2/models/three/infer", body)
    assert answer.status_code == 200, answer.text
    seen = json.loads(answer.json()["outputs"][0]["data"][0])
    assert seen["request"] == {"lang": "en"} and seen["outputs"] == {"summary": {"max_chars": 80}}
    native = server.post(
        "/models/three/predict", {"inputs": [{"query": "q", "documents": ["a", "b"], "k": 1}], "parameters": {"n": 2}}
    )
    assert native.status_code == 200, native.text
    assert json.loads(native.json()["outputs"][0])["request"] == {"n": 2}


@pytest.mark.parametrize("key", ["headers", "triton_anything"])
def test_reserved_parameters_are_refused_as_triton_does(server: RunningServer, key: str) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    answer = server.post("/v2/models/identity/infer", {**body, "parameters": {key: "x"}})
    assert answer.status_code == 400
    assert answer.json()["error"] == f'Parameter "{key}" is a reserved parameter and cannot be specified.'


# ---- classification --------------------------------------------------------------------------


@pytest.mark.parametrize("binary", BINARY_MODES)
def test_classification_answers_the_top_classes_with_labels(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    images = np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32)
    given = [tensor("image", images, "FP32", binary)]
    logits = client.infer("classifier", given).as_numpy("logits")
    wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=5)]
    top = client.infer("classifier", given, outputs=wanted).as_numpy("logits")
    assert top.shape == (2, 5)
    for row, entries in zip(logits, top):
        parsed = [(entry.decode() if isinstance(entry, bytes) else entry).split(":") for entry in entries]
        assert [int(index) for _, index, _ in parsed] == list(np.argsort(-row)[:5])
        assert [label for _, index, label in parsed] == [LABELS[int(index)] for _, index, _ in parsed]
        np.testing.assert_allclose([float(score) for score, _, _ in parsed], np.sort(row)[::-1][:5], atol=1e-6)


def test_validate_names_a_missing_label_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        models:
          - name: classifier
            path: "{MODELS}/classifier.pt"
            outputs:
              - {name: logits, shape: [-1, 10], label_filename: missing.txt}
        """,
    )
    found = problems_of(run_inferd("validate", str(config), cwd=tmp_path), config)
    assert found == [
        f"models[0].outputs[0].label_filename: {tmp_path}/missing.txt: no such file (one class name a line)"
    ]


# ---- statistics ------------------------------------------------------------------------------


def test_statistics_agree_with_metrics(client: httpclient.InferenceServerClient, server: RunningServer) -> None:
    rows = np.zeros((2, 16), dtype=np.float32)
    for _ in range(4):
        client.infer("counted", [tensor("input", rows, "FP32", True)])
    with pytest.raises(InferenceServerException):
        client.infer("counted", [tensor("input", np.zeros((1, 8), np.float32), "FP32", True)])
    (stats,) = client.get_inference_statistics("counted")["model_stats"]
    assert stats["name"] == "counted" and stats["version"] == "1" and stats["last_inference"] > 0
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 4 == metric(server, "inferd_requests_total", model="counted", code="200")
    assert inference["fail"]["count"] == 1 == metric(server, "inferd_requests_total", model="counted", code="400")
    assert inference["queue"]["count"] == metric(server, "inferd_queue_duration_seconds_count", model="counted")
    executions = metric(server, "inferd_inference_duration_seconds_count", model="counted")
    assert stats["execution_count"] == executions == sum(b["compute_infer"]["count"] for b in stats["batch_stats"])
    assert stats["inference_count"] == 8 == metric(server, "inferd_batch_size_sum", model="counted")
    compute_s = metric(server, "inferd_inference_duration_seconds_sum", model="counted")
    assert sum(b["compute_infer"]["ns"] for b in stats["batch_stats"]) == pytest.approx(compute_s * 1e9, rel=1e-6)
    assert inference["success"]["ns"] > 0


def test_statistics_of_every_model_and_of_one_version(client: httpclient.InferenceServerClient) -> None:
    every = client.get_inference_statistics()["model_stats"]
    assert {stats["name"] for stats in every} >= {"simple", "classifier", "counted"}
    (one,) = client.get_inference_statistics("simple", model_version="1")["model_stats"]
    assert one["name"] == "simple"
    with pytest.raises(InferenceServerException) as unknown:
        client.get_inference_statistics("nope")
    assert unknown.value.status() == "404"
    assert unknown.value.message().startswith("Request for unknown model: 'nope' is not found")
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'simple' version 3 is not found"):
        client.get_inference_statistics("simple", model_version="3")
