"""Rate limits against a real inferd, on every inference front: 429 with Retry-After and a JSON
error naming the limit, per API key (by its name) and per model, counted on /metrics by key name,
never by the key itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import HANDLERS, RunningServer, free_port, start_server
from tests.generation.conftest import GENERATORS

grpcclient = pytest.importorskip("tritonclient.grpc")
openai = pytest.importorskip("openai")
import numpy as np  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

KEYS = "tenant-a:secret-a, tenant-b:secret-b, tenant-c:secret-c, secret-d"
# Rates so slow that no token comes back while a test runs: each answer is decided by the burst.
CONFIG = """
server:
  host: 127.0.0.1
  grpc_port: {grpc_port}
  drain_timeout_s: 10
  auth: {{api_keys_env: INFERD_TEST_KEYS}}
  key_rate_limits:
    tenant-a: {{requests_per_s: 0.01, burst: 2}}
    "*": {{requests_per_s: 0.01, burst: 50}}
models:
  - {{name: echo, handler: "{handlers}:Echo"}}
  - name: scarce
    handler: "{handlers}:Identity"
    outputs: [{{name: output, datatype: BYTES, shape: [-1]}}]
    rate_limit: {{requests_per_s: 0.05, burst: 3}}
  - {{name: lengths, handler: "{handlers}:Lengths", rate_limit: {{requests_per_s: 0.02, burst: 1}}}}
  - name: caps
    handler: "{generators}:Capitals"
    generation: {{max_prompt_tokens: 64, max_tokens: 16, default_max_tokens: 8}}
    rate_limit: {{requests_per_s: 0.02, burst: 1}}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    grpc_port = free_port()
    text = CONFIG.format(grpc_port=grpc_port, handlers=HANDLERS, generators=GENERATORS)
    server = start_server(tmp_path, text, env={"INFERD_TEST_KEYS": KEYS}, api_key="secret-d")
    server.grpc_port = grpc_port  # type: ignore[attr-defined]
    yield server
    server.stop()
    assert_clean_log(server.log())


def predict(server: RunningServer, model: str, key: str) -> httpx.Response:
    return httpx.post(f"{server.url}/models/{model}/predict", json={"inputs": ["x"]},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip


def assert_refused(answer: httpx.Response, who: str, limit: str, most_s: int) -> None:
    assert answer.status_code == 429, answer.text
    assert 1 <= int(answer.headers["Retry-After"]) <= most_s
    body = answer.json()
    assert body["limit"] == limit and body["error"].startswith(f"{who} is over its rate limit")
    assert f"retry in {answer.headers['Retry-After']} s" in body["error"]


def limited_count(server: RunningServer, key: str, model: str, limit: str) -> float:
    pattern = rf'^inferd_rate_limited_total\{{key="{key}",limit="{limit}",model="{model}"\}} (\S+)$'
    found = re.search(pattern, server.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_key_past_its_burst_gets_429_on_every_front_and_other_keys_do_not(server: RunningServer) -> None:
    assert [predict(server, "echo", "secret-a").status_code for _ in range(2)] == [200, 200]
    assert_refused(predict(server, "echo", "secret-a"), "API key 'tenant-a'", "key", 100)
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    v2 = httpx.post(f"{server.url}/v2/models/echo/infer", json=body, headers={"X-API-Key": "secret-a"})
    assert_refused(v2, "API key 'tenant-a'", "key", 100)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="secret-a", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="lengths", input="x")
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert "API key 'tenant-a' is over its rate limit" in str(caught.value)
    assert predict(server, "echo", "secret-b").status_code == 200  # tenant-b: a bucket of its own
    assert limited_count(server, "tenant-a", "echo", "key") == 2
    assert limited_count(server, "tenant-a", "-", "key") == 1  # the OpenAI route names its model in the body
    assert "secret-a" not in server.get("/metrics").text


def test_a_model_past_its_burst_gets_429_whoever_calls(server: RunningServer) -> None:
    assert [predict(server, "scarce", key).status_code for key in ("secret-b", "secret-c", "secret-d")] == [200] * 3
    assert_refused(predict(server, "scarce", "secret-b"), "model 'scarce'", "model", 20)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:  # type: ignore[attr-defined]
        given = grpcclient.InferInput("input", [1], "BYTES")
        given.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("scarce", [given], headers={"authorization": "Bearer secret-c"})
    assert "StatusCode.UNAVAILABLE" in str(caught.value.status())
    assert "model 'scarce' is over its rate limit" in caught.value.message()
    assert predict(server, "echo", "secret-b").status_code == 200  # other models go on
    assert limited_count(server, "tenant-b", "scarce", "model") == 1
    assert limited_count(server, "tenant-c", "scarce", "model") == 1


def test_openai_routes_meet_their_models_limit_once_the_body_names_it(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="secret-b", max_retries=0)
    assert len(client.embeddings.create(model="lengths", input="abc").data) == 1
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="lengths", input="abc")
    assert client.chat.completions.create(model="caps", messages=[{"role": "user", "content": "hi"}]).choices
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="caps", messages=[{"role": "user", "content": "hi"}])
    assert "model 'caps' is over its rate limit" in str(caught.value)
    assert limited_count(server, "tenant-b", "lengths", "model") == 1
    assert limited_count(server, "tenant-b", "caps", "model") == 1


def test_a_limit_for_a_key_name_that_does_not_exist_stops_the_server(tmp_path: Path) -> None:
    text = f"""
server: {{host: 127.0.0.1, auth: {{api_keys_env: INFERD_TEST_KEYS}}, key_rate_limits: {{tenant-x: {{requests_per_s: 1}}}}}}
models: [{{name: echo, handler: "{HANDLERS}:Echo"}}]
"""
    server = start_server(tmp_path, text, wait=False, env={"INFERD_TEST_KEYS": KEYS})
    assert server.process.wait(60) != 0
    log = server.log()
    assert "server.key_rate_limits.tenant-x: no API key is named 'tenant-x'" in log
    assert "'tenant-a'" in log and "secret" not in log
    assert_clean_log(log)
