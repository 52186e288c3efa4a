"""NVIDIA's own KServe v2 client, `tritonclient.http`, used unchanged against a real inferd.

One inferd serves the example models (tiny, classifier, minilm) for the whole module; every answer
the client gets is compared with the native route's answer for the same input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RunningServer, example_config, start_server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

EXAMPLES = example_config()  # the shipped example models, as a user serves them

BINARY_MODES = [pytest.param(False, id="json"), pytest.param(True, id="binary")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("tritonclient"), EXAMPLES)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield triton
    triton.close()


def native(server: RunningServer, model: str, inputs: object) -> np.ndarray:
    answer = server.post(f"/models/{model}/predict", {"inputs": inputs})
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["outputs"], dtype=np.float32)


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    given = httpclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def test_server_is_live_and_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    for model in ("tiny", "classifier", "minilm"):
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, model_version="1")


def test_server_metadata_names_inferd_and_its_extensions(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "inferd"
    assert {"binary_tensor_data", "model_configuration", "statistics", "classification"} <= set(metadata["extensions"])


def test_model_metadata_gives_names_datatypes_and_shapes(client: httpclient.InferenceServerClient) -> None:
    tiny = client.get_model_metadata("tiny")
    assert tiny["name"] == "tiny" and tiny["versions"] == ["1"]
    assert tiny["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert [(o["datatype"], o["shape"][-1]) for o in tiny["outputs"]] == [("FP32", 16)]
    classifier = client.get_model_metadata("classifier", model_version="1")
    assert classifier["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    minilm = client.get_model_metadata("minilm")
    assert minilm["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def test_model_config_leaves_the_batch_dimension_out(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("classifier")
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert client.get_model_config("minilm")["input"][0]["data_type"] == "TYPE_STRING"


@pytest.mark.parametrize("binary", BINARY_MODES)
def test_infer_matches_the_native_route(
    client: httpclient.InferenceServerClient, server: RunningServer, binary: bool
) -> None:
    rows = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    result = client.infer("tiny", [tensor("input", rows, "FP32", binary)])
    (output,) = result.get_response()["outputs"]
    assert output["datatype"] == "FP32" and output["shape"] == [3, 16]
    assert "binary_data_size" in output["parameters"]  # asking for no output asks for all, binary
    np.testing.assert_allclose(result.as_numpy(output["name"]), native(server, "tiny", rows.tolist()), rtol=1e-6)


@pytest.mark.parametrize("binary_input", BINARY_MODES)
@pytest.mark.parametrize("binary_output", BINARY_MODES)
def test_requested_outputs_come_back_in_the_form_asked(
    client: httpclient.InferenceServerClient, server: RunningServer, binary_input: bool, binary_output: bool
) -> None:
    images = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary_output)]
    result = client.infer(
        "classifier", [tensor("image", images, "FP32", binary_input)], outputs=wanted, request_id="r-7"
    )
    response = result.get_response()
    assert response["model_name"] == "classifier" and response["model_version"] == "1" and response["id"] == "r-7"
    (output,) = response["outputs"]
    assert ("binary_data_size" in output.get("parameters", {})) is binary_output
    logits = result.as_numpy("logits")
    assert logits.shape == (2, 10)
    np.testing.assert_allclose(logits, native(server, "classifier", images.tolist()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary", BINARY_MODES)
def test_bytes_input_reaches_a_handler_model(
    client: httpclient.InferenceServerClient, server: RunningServer, binary: bool
) -> None:
    sentences = ["inferd serves models", "a second sentence"]
    texts = np.array([s.encode() for s in sentences], dtype=np.object_)
    wanted = [httpclient.InferRequestedOutput("embedding", binary_data=binary)]
    result = client.infer("minilm", [tensor("text", texts, "BYTES", binary)], outputs=wanted, model_version="1")
    embeddings = result.as_numpy("embedding")
    assert embeddings.shape == (2, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, native(server, "minilm", sentences), rtol=1e-5, atol=1e-6)


def test_errors_reach_the_client_with_their_message(client: httpclient.InferenceServerClient) -> None:
    rows = np.zeros((1, 16), np.float32)
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found") as unknown:
        client.infer("nope", [tensor("input", rows, "FP32", True)])
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'tiny' version 2 is not found"):
        client.get_model_config("tiny", model_version="2")
    assert not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException, match=r"shape \[1, 8\] does not match \[-1, 16\]"):
        client.infer("tiny", [tensor("input", np.zeros((1, 8), np.float32), "FP32", False)])
    with pytest.raises(InferenceServerException, match="not an output of this model"):
        client.infer("tiny", [tensor("input", rows, "FP32", False)], outputs=[httpclient.InferRequestedOutput("nope")])


async def test_the_asyncio_client_infers_too(server: RunningServer) -> None:
    aio = pytest.importorskip("tritonclient.http.aio")
    rows = np.random.default_rng(3).normal(size=(2, 16)).astype(np.float32)
    triton = aio.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert await triton.is_server_ready()
        given = aio.InferInput("input", [2, 16], "FP32")
        given.set_data_from_numpy(rows, binary_data=True)
        result = await triton.infer("tiny", [given], outputs=[aio.InferRequestedOutput("output", binary_data=False)])
    finally:
        await triton.close()
    np.testing.assert_allclose(result.as_numpy("output"), native(server, "tiny", rows.tolist()), rtol=1e-6)
