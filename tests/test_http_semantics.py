"""HTTP semantics on a real server: 405 with Allow on every route, HEAD like GET, X-Request-ID on
every answer and in every error body and error log line, /v2 with or without a trailing slash, and
a model's exception reaching the client as its type and message only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server, wait_until

# tiny without declared inputs: any width is queued, and the TorchScript model itself raises.
CONFIG = """
models:
  - {name: tiny, path: {MODELS}/tiny.pt}
  - {name: faulty, handler: "{HANDLERS}:Faulty"}
"""
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]
GET_ONLY = "GET, HEAD"
ROUTES = [  # every route the server has, with the methods it takes
    ("/models", GET_ONLY),
    ("/healthz", GET_ONLY),
    ("/readyz", GET_ONLY),
    ("/openapi.json", GET_ONLY),
    ("/metrics", GET_ONLY),
    ("/admin/reload", "POST"),
    ("/", GET_ONLY),
    ("/status.json", GET_ONLY),
    ("/models/tiny/predict", "POST"),
    ("/v2", GET_ONLY),
    ("/v2/", GET_ONLY),
    ("/v2/health/live", GET_ONLY),
    ("/v2/health/ready", GET_ONLY),
    ("/v2/models/tiny", GET_ONLY),
    ("/v2/models/tiny/ready", GET_ONLY),
    ("/v2/models/tiny/config", GET_ONLY),
    ("/v2/models/tiny/infer", "POST"),
    ("/v2/models/tiny/versions/1", GET_ONLY),
    ("/v2/models/tiny/versions/1/ready", GET_ONLY),
    ("/v2/models/tiny/versions/1/config", GET_ONLY),
    ("/v2/models/tiny/versions/1/infer", "POST"),
]
HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("http"), CONFIG)
    yield running
    assert running.stop() == 0, running.log()


@pytest.mark.parametrize("path, allow", ROUTES, ids=[r[0] for r in ROUTES])
def test_a_wrong_method_gets_405_with_allow(server: RunningServer, path: str, allow: str) -> None:
    wrong = [method for method in METHODS if method not in allow.split(", ")]
    assert wrong
    with server.client() as client:
        for method in wrong:
            answer = client.request(method, path)
            assert answer.status_code == 405, (method, path, answer.text)
            assert answer.headers["allow"] == allow, (method, path)
            assert HEX_ID.fullmatch(answer.headers["x-request-id"])
            if method != "HEAD":
                assert answer.json() == {
                    "error": f"{path} takes {allow}, not {method}",
                    "request_id": answer.headers["x-request-id"],
                }


@pytest.mark.parametrize("path", [path for path, allow in ROUTES if allow == GET_ONLY])
def test_head_answers_like_get_without_a_body(server: RunningServer, path: str) -> None:
    with server.client() as client:
        got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code and head.status_code in (200, 503)
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""


def test_v2_paths_answer_with_or_without_a_trailing_slash(server: RunningServer) -> None:
    for path in ("/v2", "/v2/health/ready", "/v2/models/tiny", "/v2/models/tiny/versions/1/ready"):
        plain, slashed = server.get(path), server.get(path + "/")
        assert (plain.status_code, plain.json()) == (slashed.status_code, slashed.json()) == (200, plain.json())
    assert server.get("/v2/").json()["name"] == "inferd"
    assert server.get("/healthz/").status_code == 404  # only v2 paths differ between the document and clients


def test_unknown_paths_and_models_get_404_naming_what_exists(server: RunningServer) -> None:
    nothing = server.get("/nothing/here")
    assert nothing.status_code == 404 and nothing.json()["error"] == "no route /nothing/here"
    missing = server.post("/models/nope/predict", {"inputs": [[1.0]]})
    assert missing.status_code == 404 and missing.json()["error"] == "no model named 'nope'; models: ['faulty', 'tiny']"
    v2_missing = server.get("/v2/models/nope/ready")
    assert v2_missing.status_code == 404 and v2_missing.json()["error"].startswith("Request for unknown model: 'nope' is not found")
    version = server.get("/v2/models/tiny/versions/7")
    assert version.status_code == 404 and "version 7 is not found" in version.json()["error"]
    for answer in (nothing, missing, v2_missing, version):
        assert answer.json()["request_id"] == answer.headers["x-request-id"]


def test_every_answer_carries_the_clients_request_id_or_a_new_one(server: RunningServer) -> None:
    sent = server.client().get("/healthz", headers={"X-Request-ID": "client-id.42:a/b"})
    assert sent.headers["x-request-id"] == "client-id.42:a/b"
    fresh = [server.get("/healthz").headers["x-request-id"] for _ in range(3)]
    assert all(HEX_ID.fullmatch(rid) for rid in fresh) and len(set(fresh)) == 3
    for insane in ("has spaces", "x" * 200, "quote\"d", "-leading-dash"):
        replaced = server.client().get("/healthz", headers={"X-Request-ID": insane}).headers["x-request-id"]
        assert HEX_ID.fullmatch(replaced), insane
    ok = server.client().post("/models/tiny/predict", json={"inputs": [[0.0] * 16]}, headers={"X-Request-ID": "ok-1"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "ok-1"


def test_error_bodies_and_error_log_lines_carry_the_request_id(server: RunningServer) -> None:
    with server.client() as client:
        bad = client.post("/models/tiny/predict", content=b"{not json", headers={"X-Request-ID": "bad-json-1"})
    assert bad.status_code == 400
    assert bad.json()["request_id"] == "bad-json-1" == bad.headers["x-request-id"]
    assert "not valid JSON" in bad.json()["error"]
    line = "request bad-json-1: 400 POST /models/tiny/predict: the body is not valid JSON"
    wait_until(lambda: line in server.log(), 10, "the error's log line")
    assert server.log().count("bad-json-1") == 1  # one line, no traceback


def test_a_torchscript_error_reaches_the_client_as_type_and_message_only(server: RunningServer) -> None:
    with server.client() as client:
        answer = client.post("/models/tiny/predict", json={"inputs": [[0.0] * 15]}, headers={"X-Request-ID": "ts-1"})
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]
    assert message == "model 'tiny' failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x15 and 16x16)"
    assert "Traceback" not in answer.text and "/" not in message and ".py" not in answer.text
    # the operator gets the whole traceback, under the request's id, as one log line
    wait_until(lambda: "request ts-1: 422" in server.log(), 10, "the failure's log entry")
    (entry,) = [line for line in server.log().splitlines() if "request ts-1: 422" in line]
    assert "TorchScript (serialized code):" in entry and "mat1 and mat2 shapes cannot be multiplied" in entry
    assert "Traceback" not in entry
    assert "runners.py" in entry  # the frames, down to the call into the model


def test_a_handlers_exception_reaches_the_client_without_its_traceback(server: RunningServer) -> None:
    with server.client() as client:
        answer = client.post("/v2/models/faulty/infer", headers={"X-Request-ID": "faulty-1"}, json={
            "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["bad"]}]})  # fmt: skip
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "error": "model 'faulty' failed: ValueError: the item 'bad' is not allowed",
        "request_id": "faulty-1",
    }
    wait_until(lambda: "request faulty-1: 422" in server.log(), 10, "the failure's log entry")
    (entry,) = [line for line in server.log().splitlines() if "request faulty-1: 422" in line]
    assert "handlers.py" in entry and "in predict" in entry and "Traceback (most recent call last)" not in server.log()
