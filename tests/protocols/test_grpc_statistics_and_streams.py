"""gRPC twins with Triton's own clients against a real inferd: ModelStatistics answers what
GET /v2/models/.../stats answers, and ModelStreamInfer on a generative model answers one response
per generated chunk (sync and asyncio clients), a bad request answering its error on a stream that
goes on.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.logs import assert_clean_log
from tests.conftest import EXAMPLE_MODELS, RunningServer, free_port, start_server, wait_until
from tests.generation.conftest import GENERATORS

grpcclient = pytest.importorskip("tritonclient.grpc")
import tritonclient.grpc.aio as aioclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ROWS = np.arange(32, dtype=np.float32).reshape(2, 16) / 7


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    grpc_port = free_port()
    config = f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}, drain_timeout_s: 10}}
models:
  - name: tiny
    path: {EXAMPLE_MODELS}/tiny.pt
    max_batch_size: 32
    inputs: [{{name: input, datatype: FP32, shape: [-1, 16]}}]
  - name: caps
    handler: {GENERATORS}:Capitals
    max_batch_size: 4
    generation: {{max_prompt_tokens: 64, max_tokens: 400, default_max_tokens: 100}}
  - name: slowcaps
    handler: {GENERATORS}:Capitals
    handler_args: {{step_delay_s: 0.05}}
    max_batch_size: 4
    generation: {{max_prompt_tokens: 64, max_tokens: 400, default_max_tokens: 400}}
"""
    running = start_server(tmp_path_factory.mktemp("grpc-twins"), config)
    running.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield running
    assert running.stop() == 0, running.log()
    assert_clean_log(running.log())


@pytest.fixture
def client(server: RunningServer) -> Iterator[Any]:
    made = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    yield made
    made.close()


def tiny_input() -> Any:
    given = grpcclient.InferInput("input", [2, 16], "FP32")
    given.set_data_from_numpy(ROWS)
    return given


def test_model_statistics_answers_what_the_http_twin_answers(server: RunningServer, client: Any) -> None:
    for _ in range(3):
        client.infer("tiny", [tiny_input()])
    over_grpc = client.get_inference_statistics("tiny", as_json=True)["model_stats"]
    over_http = server.get("/v2/models/tiny/stats").json()["model_stats"]
    assert [s["name"] for s in over_grpc] == ["tiny"] and over_grpc[0]["version"] == "1"
    for field in ("inference_count", "execution_count"):
        assert int(over_grpc[0][field]) == over_http[0][field] >= 3, field
    success = over_grpc[0]["inference_stats"]["success"]
    assert int(success["count"]) == over_http[0]["inference_stats"]["success"]["count"]
    assert int(success["ns"]) > 0
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in every} == {"tiny", "caps", "slowcaps"}
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("absent")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def prompt_inputs(prompt: str) -> list[Any]:
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    return [text]


def chunk_of(result: Any) -> tuple[str, bool]:
    text = result.as_numpy("text_output")[0].decode()
    return text, result.get_response().parameters["triton_final_response"].bool_param


def test_a_generative_model_streams_one_response_per_chunk(client: Any) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("caps", prompt_inputs("hello"), request_id="a", parameters={"max_tokens": 20})
    results, chunks = [], []
    while not chunks or not chunks[-1][1]:
        result, error = answers.get(timeout=60)
        assert error is None, error
        assert result.get_response().id == "a"
        results.append(result.get_response())
        chunks.append(chunk_of(result))
    assert "".join(text for text, _ in chunks) == "HELLO"
    assert len(chunks) >= 5  # one response per step, not one answer at the end
    assert results[0].parameters["prompt_tokens"].int64_param == 5
    assert results[-1].parameters["finish_reason"].string_param == "stop"
    assert results[-1].parameters["completion_tokens"].int64_param >= 5
    too_many = grpcclient.InferInput("max_tokens", [1], "INT32")
    too_many.set_data_from_numpy(np.array([100_000], dtype=np.int32))
    client.async_stream_infer("caps", [*prompt_inputs("x"), too_many])
    _, error = answers.get(timeout=60)
    assert error is not None and "max_tokens" in error.message()
    client.async_stream_infer("caps", prompt_inputs("ok"), parameters={"max_tokens": 1})  # the stream goes on
    result, error = answers.get(timeout=60)
    assert error is None and chunk_of(result) == ("O", True)
    assert result.get_response().parameters["finish_reason"].string_param == "length"
    client.stop_stream()


def test_the_asyncio_client_streams_a_generation(server: RunningServer) -> None:
    async def run() -> list[tuple[str, bool]]:
        client = aioclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]

        async def requests() -> Any:
            text = aioclient.InferInput("text_input", [1], "BYTES")
            text.set_data_from_numpy(np.array([b"abc"], dtype=object))
            yield {"model_name": "caps", "inputs": [text], "parameters": {"temperature": 0}}

        chunks = []
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                chunks.append(chunk_of(result))
                if chunks[-1][1]:
                    break
        finally:
            await client.close()
        return chunks

    chunks = asyncio.run(run())
    assert "".join(text for text, _ in chunks) == "ABC" and len(chunks) >= 3


def cancelled_sequences(server: RunningServer) -> float:
    text = server.get("/metrics").text
    lines = [
        line for line in text.splitlines() if line.startswith('inferd_sequences_cancelled_total{model="slowcaps"}')
    ]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_stream_cancelled_mid_sequence_stops_the_sequence(server: RunningServer, client: Any) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    before = cancelled_sequences(server)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("slowcaps", prompt_inputs("forever: and ever"), parameters={"max_tokens": 400})
    result, error = answers.get(timeout=60)
    assert error is None and not chunk_of(result)[1]  # the sequence is running (400 steps of 50 ms)
    client.stop_stream(cancel_requests=True)
    wait_until(lambda: cancelled_sequences(server) > before, 30, "the sequence to be cancelled")
    wait_until(lambda: server.models()["slowcaps"]["queue_depth"] == 0, 30, "nothing left queued")


def caps_answered(server: RunningServer, protocol: str) -> float:
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            wanted = {"model": "caps", "code": "200", "protocol": protocol}
            if sample.name == "inferd_requests_total" and all(sample.labels.get(k) == v for k, v in wanted.items()):
                return float(sample.value)
    return 0.0


def test_generations_count_under_the_protocol_they_came_by(server: RunningServer, client: Any) -> None:
    http_before, grpc_before = caps_answered(server, "http"), caps_answered(server, "grpc")
    assert server.post("/models/caps/generate", {"prompt": "hi"}).json()["text"] == "HI"
    completion = server.post("/v1/completions", {"model": "caps", "prompt": "ok"})
    assert completion.status_code == 200, completion.text
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("caps", prompt_inputs("yes"))
    while not chunk_of(answers.get(timeout=60)[0])[1]:
        pass
    client.stop_stream()
    wait_until(lambda: caps_answered(server, "grpc") == grpc_before + 1, 30, "the generation counted under grpc")
    assert caps_answered(server, "http") == http_before + 2  # the generate route and the OpenAI one
