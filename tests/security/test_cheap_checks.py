"""Cheap checks come before expensive decoding: a request the model cannot take is refused from
its headers and the v2 JSON header, before any per-element work; what decoding remains runs off
the event loop. Each attack prints the worst /healthz latency seen while it ran."""

from __future__ import annotations

import json

import httpx
import orjson
import pytest

from tests.conftest import RunningServer
from tests.security.probes import MIB, Watch, report

V2_HEADER = "Inference-Header-Content-Length"
BYTES_ELEMENTS = 4_194_240  # empty strings: 4-byte length prefixes filling 16 MiB


def _attack(server: RunningServer, name: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    with Watch(server) as watch:
        answer = httpx.post(server.url + path, content=body, headers=headers, timeout=120)
    report(name, {"body (MiB)": round(len(body) / MIB, 1), "answer": answer.status_code, **watch.figures()})
    return answer


def _v2_binary(inputs: list[dict], tail: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + tail, {V2_HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


def _empty_strings(count: int) -> bytes:
    return b"\0\0\0\0" * count


@pytest.mark.parametrize("model, status", [("wide", 400), ("tiny", 413)])
def test_bytes_for_an_fp32_model_are_refused_before_they_are_split(
    server: RunningServer, model: str, status: int
) -> None:
    """`wide` has no bound on its body (a variable dim), so the datatype refuses it; `tiny`'s
    declared inputs bound its body, so Content-Length alone refuses it."""
    tail = _empty_strings(BYTES_ELEMENTS)
    spec = {
        "name": "input",
        "datatype": "BYTES",
        "shape": [BYTES_ELEMENTS],
        "parameters": {"binary_data_size": len(tail)},
    }
    answer = _attack(server, f"v2 BYTES x {BYTES_ELEMENTS} to FP32 model {model}", f"/v2/models/{model}/infer",
                     *_v2_binary([spec], tail))  # fmt: skip
    assert answer.status_code == status, answer.text
    words = "datatype BYTES but the model takes FP32" if status == 400 else "max_batch_size"
    assert words in answer.json()["error"]


def test_bytes_past_max_batch_size_are_refused_before_they_are_split(server: RunningServer) -> None:
    tail = _empty_strings(BYTES_ELEMENTS)
    spec = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [BYTES_ELEMENTS],
        "parameters": {"binary_data_size": len(tail)},
    }
    answer = _attack(server, f"v2 BYTES x {BYTES_ELEMENTS} to a handler taking 4", "/v2/models/sizes/infer",
                     *_v2_binary([spec], tail))  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert f"carries {BYTES_ELEMENTS} items but the model takes at most 4" in answer.json()["error"]


def test_a_million_input_names_are_refused_by_count(server: RunningServer) -> None:
    names = {f"i{i}": 0 for i in range(1_200_000)}
    body = orjson.dumps({"inputs": names})
    answer = _attack(server, "native inputs object with 1.2 M keys (wide)", "/models/wide/predict", body, {})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "this model takes inputs ['input']" in error and len(error) < 500


def test_a_million_v2_inputs_are_refused_by_count(server: RunningServer) -> None:
    inputs = [{"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [0.5]} for i in range(200_000)]
    body = orjson.dumps({"inputs": inputs})
    answer = _attack(server, "v2 JSON with 200,000 inputs (wide)", "/v2/models/wide/infer", body, {})
    assert answer.status_code == 400, answer.text
    assert "the request gives 200000 inputs; this model takes 1" in answer.json()["error"]


@pytest.mark.parametrize("model, status", [("wide", 400), ("tiny", 413)])
def test_rows_past_max_batch_size_are_refused_before_they_are_converted(
    server: RunningServer, model: str, status: int
) -> None:
    rows = [[0.123456789] * 16] * (15 * MIB // (16 * 12))
    body = orjson.dumps({"inputs": rows})
    answer = _attack(server, f"native {len(rows)} float rows to {model} (max_batch_size 32)",
                     f"/models/{model}/predict", body, {})  # fmt: skip
    assert answer.status_code == status, answer.text
    assert "max_batch_size" in answer.json()["error"]


def test_a_large_valid_json_body_decodes_off_the_loop(server: RunningServer) -> None:
    """32 rows of 32,768 floats (about 12 MiB of JSON): accepted, decoded on the decode thread."""
    rows = [[0.123456789] * 32_768] * 32
    body = orjson.dumps({"inputs": rows})
    answer = _attack(server, "native 32 x 32768 floats to wide (valid, the model refuses the width)",
                     "/models/wide/predict", body, {})  # fmt: skip
    assert answer.status_code == 422, answer.text  # decoded and queued: Linear(16, 16) refuses the width


def test_a_handler_gets_an_800k_key_item_without_the_loop_parsing_it(server: RunningServer) -> None:
    """Accepted this time: the decoder process parses it and packs the item; only the worker unpickles it."""
    item = {f"k{i}": i for i in range(800_000)}  # about 13 MiB, within max_request_bytes
    body = orjson.dumps({"inputs": [item, [1, 2, 3]]})
    answer = _attack(server, "native handler item with 800 k keys (sizes, valid)", "/models/sizes/predict", body, {})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [800_000, 3]


def test_large_v2_json_naming_shared_memory_is_refused_unparsed(server: RunningServer) -> None:
    data = [0.5] * 40_000
    inputs = [{"name": "input", "datatype": "FP32", "shape": [32, 1250], "data": data,
               "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 160_000}}]  # fmt: skip
    answer = _attack(server, "v2 JSON of 200 KiB naming a region (wide)", "/v2/models/wide/infer",
                     orjson.dumps({"inputs": inputs}), {})  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert "names shared-memory regions" in answer.json()["error"]


def test_the_decoder_process_comes_back_after_a_kill(server: RunningServer) -> None:
    import psutil

    body = orjson.dumps({"inputs": ["x" * 200_000, "y"]})  # past the size decoded in the decoder process

    def send() -> httpx.Response:
        return httpx.post(server.url + "/models/sizes/predict", content=body, timeout=60)

    assert send().json()["outputs"] == [200_000, 1]
    main = psutil.Process(server.process.pid)
    decoders = [p for p in main.children(recursive=True) if "json decoder" in " ".join(p.cmdline())]
    assert len(decoders) == 1, [p.cmdline() for p in main.children(recursive=True)]
    decoders[0].kill()
    decoders[0].wait(10)
    answer = send()
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [200_000, 1]


def test_a_chat_of_a_million_values_is_refused_off_the_loop(server: RunningServer) -> None:
    messages = [{"role": "user", "content": str(i)} for i in range(300_000)]
    body = orjson.dumps({"model": "sizes", "messages": messages})
    answer = _attack(server, "OpenAI chat with 300,000 messages", "/v1/chat/completions", body,
                     {"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 413, answer.text
    assert "more than 50000 values" in answer.json()["error"]["message"]
