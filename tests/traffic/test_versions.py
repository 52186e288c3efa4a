"""Versions of a model against a real server: each version reachable on every route form, the
plain routes on the default, metadata listing the versions, each version with its own workers,
settings and series, and a model without versions still answering as its version "1"."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, start_server

from .traffic import sample

CONFIG = """
models:
  - name: echo
    max_batch_size: 4                      # each version's, unless it gives its own
    versions:
      - {version: 1, handler: "{HANDLERS}:Echo", handler_args: {tag: v1}}
      - {version: 2, handler: "{HANDLERS}:Echo", handler_args: {tag: v2}, max_batch_size: 8}
      - {version: 10, handler: "{HANDLERS}:Echo", handler_args: {tag: v10}}
    default_version: 2
  - name: newest
    versions:
      - {version: 9, handler: "{HANDLERS}:Echo", handler_args: {tag: n9}}
      - {version: 10, handler: "{HANDLERS}:Echo", handler_args: {tag: n10}}
  - {name: plain, handler: "{HANDLERS}:Echo", handler_args: {tag: plain}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("versions"), CONFIG)
    yield running
    assert running.stop() == 0
    assert_clean_log(running.log())


def tag_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["outputs"][0]["tag"])


def native(server: RunningServer, path: str) -> str:
    return tag_of(server.post(path, {"inputs": ["x"]}))


def test_each_version_has_its_native_route_and_the_plain_one_reaches_the_default(server: RunningServer) -> None:
    assert native(server, "/models/echo/versions/1/predict") == "v1"
    assert native(server, "/models/echo/versions/2/predict") == "v2"
    assert native(server, "/models/echo/versions/10/predict") == "v10"
    assert native(server, "/models/echo/predict") == "v2"  # default_version
    assert native(server, "/models/newest/predict") == "n10"  # the highest: 10 above 9, by value


def v2_infer(server: RunningServer, path: str) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    return server.post(path, body)


def test_v2_routes_reach_each_version(server: RunningServer) -> None:
    answer = v2_infer(server, "/v2/models/echo/versions/1/infer")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["model_name"], answer.json()["model_version"]) == ("echo", "1")
    plain = v2_infer(server, "/v2/models/echo/infer").json()
    assert (plain["model_name"], plain["model_version"]) == ("echo", "2")
    for version in ("1", "2", "10"):
        assert server.get(f"/v2/models/echo/versions/{version}/ready").json() == {"name": "echo", "ready": True}
        config = server.get(f"/v2/models/echo/versions/{version}/config").json()
        assert config["max_batch_size"] == (8 if version == "2" else 4)  # a version's own settings
        stats = server.get(f"/v2/models/echo/versions/{version}/stats").json()["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [("echo", version)]


def test_metadata_lists_the_versions(server: RunningServer) -> None:
    for path in ("/v2/models/echo", "/v2/models/echo/versions/1"):
        metadata = server.get(path).json()
        assert metadata["name"] == "echo"
        assert metadata["versions"] == ["1", "2", "10"]
    assert server.get("/v2/models/plain").json()["versions"] == ["1"]


def test_an_unknown_version_is_a_404_naming_the_versions(server: RunningServer) -> None:
    for path in ("/v2/models/echo/versions/3", "/v2/models/echo/versions/3/infer", "/v2/models/echo@3"):
        response = server.get(path) if not path.endswith("infer") else v2_infer(server, path)
        assert response.status_code == 404, path
        assert response.json()["error"].startswith("Request for unknown model:"), path
    assert "versions: ['1', '2', '10']" in server.get("/v2/models/echo/versions/3").json()["error"]
    assert server.post("/models/echo/versions/3/predict", {"inputs": ["x"]}).status_code == 404


def test_a_model_without_versions_answers_as_version_1(server: RunningServer) -> None:
    assert native(server, "/models/plain/predict") == "plain"
    answer = v2_infer(server, "/v2/models/plain/versions/1/infer")
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert v2_infer(server, "/v2/models/plain/versions/2/infer").status_code == 404


def test_each_version_has_its_own_workers_and_series(server: RunningServer) -> None:
    models = server.models()
    assert {"echo@1", "echo@2", "echo@10", "newest@9", "newest@10", "plain"} == set(models)
    pids = {name: {w["pid"] for w in model["workers"]} for name, model in models.items()}
    assert len(set().union(*pids.values())) == sum(len(p) for p in pids.values())  # no worker shared
    assert models["echo@2"]["version"] == "2"
    before = sample(server, "inferd_requests_total", model="echo@1", code="200")
    native(server, "/models/echo/versions/1/predict")
    assert sample(server, "inferd_requests_total", model="echo@1", code="200") == before + 1
    assert sample(server, "inferd_model_version_info", model="echo@2", name="echo", version="2", default="true") == 1
    assert sample(server, "inferd_model_version_info", model="echo@1", name="echo", version="1", default="false") == 1


def test_tritonclient_names_versions(server: RunningServer) -> None:
    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.get_model_metadata("echo", "10")["versions"] == ["1", "2", "10"]
    assert client.is_model_ready("echo", "1") and not client.is_model_ready("echo", "4")
    data = triton.InferInput("input", [1], "BYTES")
    data.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    result = client.infer("echo", [data], model_version="1")
    assert result.get_response()["model_version"] == "1"
    client.close()


def test_fronts_that_take_a_name_only_reach_a_version_as_name_at_version(server: RunningServer) -> None:
    answer = v2_infer(server, "/v2/models/echo@1/infer")
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"


def test_openai_model_list_names_each_versioned_model_and_its_versions(server: RunningServer) -> None:
    ids = [entry["id"] for entry in server.get("/v1/models").json()["data"]]
    assert sorted(ids) == sorted(["echo", "echo@1", "echo@2", "echo@10", "newest", "newest@9", "newest@10", "plain"])
