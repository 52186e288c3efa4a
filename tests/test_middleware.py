"""ASGI middleware from the config, served for real: a server-wide one sees every request, a
model's own sees only that model's requests (its paths, and the OpenAI routes whose body names it),
the example header check answers 401 itself, and a middleware that cannot be built is a config error at its YAML path for `serve`,
`validate` and a reload."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import HANDLERS, TESTS, RunningServer, start_server

Serve = Callable[..., RunningServer]

REPO = TESTS.parent
HEADER_CHECK = REPO / "examples" / "header_check.py"
TAG = TESTS / "models" / "middleware.py"
GENERATORS = TESTS / "generation" / "generators.py"

CONFIG = f"""
server:
  host: 127.0.0.1
  middleware:
    - {{class: "{TAG}:Tag", args: {{name: server}}}}
models:
  - name: tagged
    handler: "{HANDLERS}:Identity"
    middleware: [{{class: "{TAG}:Tag", args: {{name: tagged}}}}]
  - name: guarded
    handler: "{HANDLERS}:Identity"
    middleware:
      - {{class: "{HEADER_CHECK}:RequireHeader", args: {{header: x-tenant, value: blue}}}}
      - {{class: "{TAG}:Tag", args: {{name: guarded}}}}
  - {{name: plain, handler: "{HANDLERS}:Identity"}}
  - {{name: piped, pipeline: [plain], middleware: [{{class: "{TAG}:Tag", args: {{name: piped}}}}]}}
  - name: guarded_llm
    handler: "{GENERATORS}:Capitals"
    generation: {{max_tokens: 200}}
    middleware:
      - {{class: "{HEADER_CHECK}:RequireHeader", args: {{header: x-tenant, value: blue}}}}
      - {{class: "{TAG}:Tag", args: {{name: guarded_llm}}}}
  - {{name: open_llm, handler: "{GENERATORS}:Capitals", generation: {{max_tokens: 200}}}}
  - name: guarded_vectors
    handler: "{HANDLERS}:Lengths"
    max_batch_size: 8
    middleware: [{{class: "{HEADER_CHECK}:RequireHeader", args: {{header: x-tenant, value: blue}}}}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("middleware"), CONFIG)
    yield running
    assert running.stop() == 0


def seen_by(response: httpx.Response) -> list[str]:
    return response.headers.get_list("x-seen-by")


def _v2(name: str) -> dict[str, object]:
    return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": [name]}]}


def test_a_server_wide_middleware_sees_every_request(server: RunningServer) -> None:
    responses = [
        server.get("/healthz"),
        server.get("/metrics"),
        server.get("/models"),
        server.get("/no/such/route"),
        server.post("/models/plain/predict", {"inputs": ["x"]}),
        server.post("/v2/models/plain/infer", _v2("x")),
        server.post("/models/tagged/predict", {"inputs": ["x"]}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 200, 200, 200]
    assert all("server" in seen_by(r) for r in responses)


def test_a_model_middleware_sees_only_that_models_requests(server: RunningServer) -> None:
    own = [
        server.post("/models/tagged/predict", {"inputs": ["x"]}),
        server.post("/v2/models/tagged/infer", _v2("x")),
        server.get("/v2/models/tagged"),
        server.get("/v2/models/tagged/ready"),
    ]
    assert [r.status_code for r in own] == [200] * 4
    assert all(seen_by(r) == ["tagged", "server"] for r in own)  # inside the server's: tagged first
    piped = server.post("/models/piped/predict", {"inputs": ["x"]})
    assert piped.json() == {"outputs": ["x"]} and seen_by(piped) == ["piped", "server"]  # not its steps' routes
    others = [
        server.post("/models/plain/predict", {"inputs": ["x"]}),
        server.get("/v2/models/plain"),
        server.get("/readyz"),
    ]
    assert all(seen_by(r) == ["server"] for r in others)


def test_the_header_check_answers_401_itself(server: RunningServer) -> None:
    refused = [
        server.post("/models/guarded/predict", {"inputs": ["x"]}),
        httpx.post(server.url + "/models/guarded/predict", json={"inputs": ["x"]}, headers={"x-tenant": "red"}),
        server.post("/v2/models/guarded/infer", _v2("x")),
    ]
    assert [r.status_code for r in refused] == [401] * 3
    assert refused[0].json() == {"error": "this route needs the header x-tenant: blue"}
    assert all(seen_by(r) == ["server"] for r in refused)  # nothing inside it ran
    metrics = server.get("/metrics").text
    assert 'inferd_batch_size_count{model="guarded"} 0.0' in metrics  # and no batch was computed
    assert 'inferd_requests_total{code="401",model="guarded",protocol="http"} 3.0' in metrics  # counted as answered
    allowed = httpx.post(server.url + "/models/guarded/predict", json={"inputs": ["x"]}, headers={"x-tenant": "blue"})
    assert allowed.status_code == 200 and allowed.json() == {"outputs": ["x"]}
    assert seen_by(allowed) == ["guarded", "server"]
    assert server.post("/models/plain/predict", {"inputs": ["x"]}).status_code == 200  # other models stay open
    assert_clean_log(server.log())


def _answered(metrics: str, model: str) -> float:
    """Requests of `model` the front counted, whatever their status."""
    pattern = rf'^inferd_requests_total{{code="\d+",model="{model}",protocol="http"}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.M))


def test_a_model_middleware_guards_the_openai_routes_that_name_it(server: RunningServer) -> None:
    refused = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for call in (
        lambda: refused.completions.create(model="guarded_llm", prompt="hello", max_tokens=10),
        lambda: refused.chat.completions.create(model="guarded_llm", messages=[{"role": "user", "content": "hi"}]),
        lambda: list(refused.completions.create(model="guarded_llm", prompt="hello", stream=True)),
        lambda: refused.embeddings.create(model="guarded_vectors", input="four"),
    ):
        with pytest.raises(openai.AuthenticationError) as refusal:
            call()
        assert refusal.value.response.json() == {"error": "this route needs the header x-tenant: blue"}  # its own
    assert refused.completions.create(model="open_llm", prompt="hello").choices[0].text == "HELLO"  # others stay open
    metrics = server.get("/metrics").text
    assert 'inferd_requests_total{code="401",model="guarded_llm",protocol="http"} 3.0' in metrics
    assert 'inferd_requests_total{code="401",model="guarded_vectors",protocol="http"} 1.0' in metrics

    before = _answered(server.get("/metrics").text, "guarded_llm")
    allowed = openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0, default_headers={"x-tenant": "blue"}
    )
    assert allowed.completions.create(model="guarded_llm", prompt="hello").choices[0].text == "HELLO"
    chat = allowed.chat.completions.create(model="guarded_llm", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "HI"
    streamed = allowed.completions.create(model="guarded_llm", prompt="hello", stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == "HELLO"
    vectors = allowed.embeddings.create(model="guarded_vectors", input=["four", "sixsix"], encoding_format="float")
    assert [item.embedding for item in vectors.data] == [[4.0, 1.0], [6.0, 1.0]]

    raw = httpx.post(
        server.url + "/v1/completions", json={"model": "guarded_llm", "prompt": "hi"}, headers={"x-tenant": "blue"}
    )
    assert raw.status_code == 200 and seen_by(raw) == ["guarded_llm", "server"]  # its chain, inside the server's
    assert raw.headers["x-request-id"]
    # Each request the chain let through counted once.
    assert _answered(server.get("/metrics").text, "guarded_llm") == before + 4
    assert_clean_log(server.log())


BROKEN = f"""
server:
  host: 127.0.0.1
  middleware: ["no_such_module_for_inferd:Check"]
models:
  - name: one
    handler: "{HANDLERS}:Identity"
    middleware: ["{TAG}:Nope", "{TAG}:NOT_A_CLASS"]
  - name: two
    handler: "{HANDLERS}:Identity"
    middleware: [{{class: "{TAG}:refuses", args: {{key_file: k}}}}]
"""


def expected_problems(folder: Path) -> list[str]:
    return [
        f"server.middleware[0].class: middleware module 'no_such_module_for_inferd' not found (searched {folder} "
        "and sys.path)",
        f"models[0].middleware[0].class: middleware module '{TAG}' has no attribute 'Nope'",
        f"models[0].middleware[1].class: {TAG}:NOT_A_CLASS is a str, not a class that takes the app",
        f"models[1].middleware[0].args: {TAG}:refuses(app, **args) raised RuntimeError: needs a signing key",
    ]


def _problems(stderr: str, config: Path) -> list[str]:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert "inferd: invalid config" in lines, stderr
    after = lines[lines.index("inferd: invalid config") + 1 :]
    return [line.removeprefix(f"{config}: ") for line in after if line.startswith(f"{config}: ")]


def test_validate_names_each_middleware_that_cannot_be_built(tmp_path: Path) -> None:
    config = tmp_path / "inferd.yaml"
    config.write_text(BROKEN)
    result = subprocess.run(
        [sys.executable, "-m", "inferd", "validate", str(config)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert _problems(result.stderr, config) == expected_problems(tmp_path)


def test_serve_refuses_a_middleware_that_cannot_be_built(serve: Serve, tmp_path: Path) -> None:
    server = serve(BROKEN, wait=False)
    assert server.process.wait(60) == 2
    assert _problems(server.log(), server.config_path) == expected_problems(tmp_path)
    assert "started worker" not in server.log()  # refused before any worker started
    assert_clean_log(server.log())


def test_the_schema_names_a_malformed_entry(tmp_path: Path) -> None:
    config = tmp_path / "inferd.yaml"
    config.write_text(f"""
models:
  - name: one
    handler: "{HANDLERS}:Identity"
    middleware: ["no-colon", {{clas: "a:B"}}]
""")
    result = subprocess.run(
        [sys.executable, "-m", "inferd", "validate", "--schema-only", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert _problems(result.stderr, config) == [
        "models[0].middleware[0].class: expected 'package.module:Class' or 'file.py:Class' (got 'no-colon')",
        "models[0].middleware[1].class: required but missing",
        "models[0].middleware[1].clas: unknown key; did you mean 'class'?",
    ]


def test_a_reload_with_a_middleware_that_cannot_be_built_is_rejected(serve: Serve) -> None:
    server = serve(CONFIG)
    server.config_path.write_text(CONFIG.replace(f"{TAG}:Tag", f"{TAG}:Nope"))
    answer = httpx.post(server.url + "/admin/reload", headers={"X-Inferd-Admin": "1"}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert any("models[0].middleware[0].class" in problem for problem in answer.json()["problems"])
    assert seen_by(server.post("/models/tagged/predict", {"inputs": ["x"]})) == ["tagged", "server"]
