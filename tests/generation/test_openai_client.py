"""The official `openai` client, sync and async, unchanged against a real `inferd serve`: chat and
completions (streamed and not), models, embeddings with the MiniLM example, API keys."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import yaml

from tests.conftest import RunningServer, example_config, start_server
from tests.generation.conftest import capitals_config

KEY = "test-key-1234567890"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(KEY + "\n")
    models = yaml.safe_load(capitals_config())["models"] + yaml.safe_load(example_config("minilm"))["models"]
    server = {"host": "127.0.0.1", "port": 0, "auth": {"api_keys_file": str(keys)}}
    config = yaml.safe_dump({"server": server, "models": models})
    running = start_server(tmp_path_factory.mktemp("openai"), config, wait=False, api_key=KEY)
    running.wait_ready(180)
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"caps", "minilm"}


def test_chat_completion(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="caps", messages=[{"role": "user", "content": "paris"}])
    assert answer.choices[0].message.content == "PARIS"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 5)


def test_chat_completion_streamed(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="caps", messages=[{"role": "user", "content": "rome"}], max_tokens=3, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ROM"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3


def test_completion_and_stream(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="caps", prompt="abc", stop=["C"])
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("AB", "stop")
    streamed = client.completions.create(model="caps", prompt="abc", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "ABC"


async def test_async_client_streams(server: RunningServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="caps", messages=[{"role": "user", "content": "async"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "ASYNC"
    await client.close()


def test_caps_are_a_400_whose_reason_the_client_shows(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="caps", prompt="x", max_tokens=9999)
    said = str(refused.value)  # what a user sees: the client's text holds OpenAI's error.message
    assert "max_tokens is 9999" in said and "at most 400" in said, said
    assert refused.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="nope", prompt="x")
    assert "'caps'" in str(unknown.value) and unknown.value.code == "model_not_found"


def test_a_wrong_key_is_refused(server: RunningServer) -> None:
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.code == "invalid_api_key" and "key" in str(refused.value).lower()


def test_errors_read_as_openai_errors_on_every_v1_path(server: RunningServer) -> None:
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/chat/completions"), ("GET", "/v1/nothing")):
        answer = httpx.request(method, server.url + path, content=b"{}", headers=server.headers, timeout=30)
        error = answer.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["message"], (path, answer.text)
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
    assert isinstance(server.get("/v2/models/nothing").json()["error"], str)  # other routes keep inferd's


def test_embeddings_match_the_native_route(client: openai.OpenAI, server: RunningServer) -> None:
    texts = ["a sentence", "another one"]
    answer = client.embeddings.create(model="minilm", input=texts)  # base64 on the wire, as the client asks
    vectors = np.array([d.embedding for d in answer.data])
    native = np.array(server.post("/models/minilm/predict", {"inputs": texts}).json()["outputs"])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(vectors, native, atol=1e-6)
    floats = client.embeddings.create(model="minilm", input="a sentence", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, native[0], atol=1e-6)
