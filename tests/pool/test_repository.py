"""Triton's model repository extension on a real inferd, through Triton's own clients (HTTP and
gRPC): index, load and unload the config's models; an unloaded model's workers are gone (read from
the OS) and its requests get a clear 503; the calls are admin calls, guarded as /admin/ is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import HANDLERS, RunningServer, free_port, start_server

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

POOL_HANDLERS = Path(__file__).resolve().parents[1] / "models" / "pool_handlers.py"
ADMIN = {"X-Inferd-Admin": "1"}  # what makes an admin request one that no web page can send
MODELS = f"""
models:
  - {{name: echo, handler: "{HANDLERS}:Echo", max_batch_size: 4}}
  - {{name: lazy, handler: "{POOL_HANDLERS}:Gated", load: lazy, handler_args: {{tag: lazy}}}}
  - {{name: chain, pipeline: [echo]}}
"""


def holds_memory(pid: int) -> bool:
    """Whether the process still exists with memory of its own (a zombie holds none)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def index_of(server: RunningServer) -> dict[str, dict[str, str]]:
    answer = httpx.post(server.url + "/v2/repository/index", headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    grpc_port = free_port()
    text = f"server: {{host: 127.0.0.1, port: 1, grpc_port: {grpc_port}, drain_timeout_s: 10}}\n" + MODELS
    running = start_server(tmp_path_factory.mktemp("repository"), text)
    running.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield running
    assert running.stop() == 0, running.log()
    assert_clean_log(running.log())


@pytest.fixture
def http_client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def grpc_client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    yield client
    client.close()


def test_the_index_lists_every_model_of_the_config(
    server: RunningServer, http_client: httpclient.InferenceServerClient
) -> None:
    index = {entry["name"]: entry for entry in http_client.get_model_repository_index()}
    assert index["echo"] == {"name": "echo", "version": "1", "state": "READY", "reason": ""}
    assert index["lazy"]["state"] == "UNAVAILABLE" and "unloaded (lazy" in index["lazy"]["reason"]
    assert index["chain"]["state"] == "READY"
    ready_only = httpx.post(server.url + "/v2/repository/index", json={"ready": True}, timeout=30)
    assert {entry["name"] for entry in ready_only.json()} == {"echo", "chain"}


def test_http_unload_ends_the_workers_and_load_starts_new_ones(
    server: RunningServer, http_client: httpclient.InferenceServerClient
) -> None:
    pids = server.worker_pids("echo")
    assert pids and all(holds_memory(pid) for pid in pids)
    http_client.unload_model("echo")
    assert not any(holds_memory(pid) for pid in pids)  # answered once the workers are gone
    assert index_of(server)["echo"]["state"] == "UNAVAILABLE"
    assert server.models()["echo"]["state"] == "unloaded" and server.models()["echo"]["workers"] == []
    refused = server.post("/models/echo/predict", {"inputs": ["x"]})
    assert refused.status_code == 503
    assert (
        "model 'echo' is unloaded" in refused.json()["error"]
        and "/v2/repository/models/echo/load" in refused.json()["error"]
    )
    assert server.post("/models/chain/predict", {"inputs": ["x"]}).status_code == 503  # its step is unloaded
    assert not http_client.is_model_ready("echo")
    assert server.get("/readyz").status_code == 200  # unloaded on purpose: not a readiness fault
    assert server.get("/v2/models/echo").json()["state"] == "unloaded"

    http_client.load_model("echo")
    assert http_client.is_model_ready("echo") and index_of(server)["echo"]["state"] == "READY"
    answer = server.post("/models/echo/predict", {"inputs": ["x"]})
    assert answer.status_code == 200 and answer.json()["outputs"][0]["pid"] not in pids
    http_client.load_model("echo")  # loading a loaded model changes nothing
    assert server.worker_pids("echo") == [answer.json()["outputs"][0]["pid"]]


def test_grpc_loads_and_unloads_a_lazy_model(
    server: RunningServer, grpc_client: grpcclient.InferenceServerClient
) -> None:
    index = {model.name: model for model in grpc_client.get_model_repository_index().models}
    assert index["lazy"].state == "UNAVAILABLE" and index["echo"].state == "READY"
    grpc_client.load_model("lazy")
    assert grpc_client.is_model_ready("lazy") and server.models()["lazy"]["state"] == "ready"
    pids = server.worker_pids("lazy")
    grpc_client.unload_model("lazy")
    assert not any(holds_memory(pid) for pid in pids)
    ready_only = grpc_client.get_model_repository_index(as_json=True)
    assert {m["name"]: m.get("state") for m in ready_only["models"]}["lazy"] == "UNAVAILABLE"
    answer = server.post("/models/lazy/predict", {"inputs": ["x"]})  # lazy: the request loads it again
    assert answer.status_code == 200 and answer.json()["outputs"][0]["pid"] not in pids


def test_a_pipeline_loads_its_steps_and_has_nothing_to_unload(
    server: RunningServer, http_client: httpclient.InferenceServerClient
) -> None:
    http_client.unload_model("echo")
    http_client.load_model("chain")
    assert server.post("/models/chain/predict", {"inputs": ["x"]}).status_code == 200
    with pytest.raises(InferenceServerException) as refused:
        http_client.unload_model("chain")
    assert refused.value.status() == "400" and "is a pipeline" in refused.value.message()


def test_bad_repository_requests_say_what_is_wrong(
    server: RunningServer, grpc_client: grpcclient.InferenceServerClient
) -> None:
    def post(path: str, body: bytes = b"") -> httpx.Response:
        return httpx.post(server.url + path, content=body, headers=ADMIN, timeout=30)

    unknown = post("/v2/repository/models/nope/load")
    assert unknown.status_code == 404 and "no model named 'nope'" in unknown.json()["error"]
    assert "'echo'" in unknown.json()["error"]
    override = post("/v2/repository/models/echo/load", b'{"parameters": {"config": "{}"}}')
    assert override.status_code == 400 and "cannot carry a model's configuration" in override.json()["error"]
    assert post("/v2/repository/index", b"[1]").status_code == 400
    assert post("/v2/repository/index", b'{"ready": "yes"}').status_code == 400
    assert post("/v2/repository/models/echo/unload", b"{not json").status_code == 400
    assert post("/v2/repository/models/echo/unload", b'{"parameters": []}').status_code == 400
    assert httpx.get(server.url + "/v2/repository/index", headers=ADMIN).status_code == 405
    with pytest.raises(InferenceServerException) as missing:
        grpc_client.load_model("nope")
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.load_model("echo", config="{}")
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_repository_calls_refuse_what_a_web_page_could_send(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert [m["name"] for m in client.get_model_repository_index()]  # tritonclient unchanged: no extra header
    form = httpx.post(server.url + "/v2/repository/models/echo/unload", content=b"a=1",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert form.status_code == 403 and "X-Inferd-Admin" in form.json()["error"]
    bare_from_a_page = httpx.post(server.url + "/v2/repository/models/echo/unload", content=b"",
                                  headers={"Origin": f"http://{server.url.removeprefix('http://')}"})  # fmt: skip
    assert bare_from_a_page.status_code == 403  # a page's own script still needs the JSON type or the header
    foreign = httpx.post(server.url + "/v2/repository/index", json={}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "another origin" in foreign.json()["error"]
    rebound = httpx.post(server.url + "/v2/repository/index", json={}, headers={"Host": "evil.example"})
    assert rebound.status_code == 403
    assert httpx.post(server.url + "/v2/repository/index", json={}).status_code == 200  # a JSON body will do
    assert server.models()["echo"]["state"] == "ready"
    client.close()


KEYED = f"""
server: {{host: 127.0.0.1, port: 1, grpc_port: %d,
         auth: {{api_keys_env: TEST_API_KEYS, admin_keys_env: TEST_ADMIN_KEYS}}}}
models:
  - {{name: echo, handler: "{HANDLERS}:Echo"}}
"""
KEYS = {"TEST_API_KEYS": "api-key", "TEST_ADMIN_KEYS": "admin-key"}


def test_with_admin_keys_only_an_admin_key_opens_them(serve) -> None:
    grpc_port = free_port()
    server = serve(KEYED % grpc_port, env=KEYS, api_key="api-key")
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as api_key:
        http.unload_model("echo", headers={**ADMIN, "Authorization": "Bearer api-key"})
    assert api_key.value.status() == "401" and "admin key" in api_key.value.message()
    http.unload_model("echo", headers={**ADMIN, "Authorization": "Bearer admin-key"})
    assert server.models()["echo"]["state"] == "unloaded"

    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    for headers in ({}, {"authorization": "Bearer api-key"}):
        with pytest.raises(InferenceServerException) as denied:
            grpc.load_model("echo", headers=headers)
        assert denied.value.status() == "StatusCode.UNAUTHENTICATED" and "admin key" in denied.value.message()
    grpc.load_model("echo", headers={"authorization": "Bearer admin-key"})
    assert server.models()["echo"]["state"] == "ready"
    index = grpc.get_model_repository_index(headers={"x-api-key": "admin-key"})
    assert [m.state for m in index.models] == ["READY"]
    grpc.close()
    http.close()
    assert_clean_log(server.log())


def test_from_another_address_without_admin_keys_they_are_refused(serve) -> None:
    from tests.test_admin import outward_address

    outward = outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the server from")
    grpc_port = free_port()
    server = serve(
        f"server: {{host: 0.0.0.0, port: 1, grpc_port: {grpc_port}}}\nmodels:\n"
        f'  - {{name: echo, handler: "{HANDLERS}:Echo"}}\n'
    )
    port = server.url.rsplit(":", 1)[1]
    remote = httpx.post(f"http://{outward}:{port}/v2/repository/models/echo/unload", json={}, timeout=30)
    assert remote.status_code == 403 and f"came from {outward}" in remote.json()["error"]
    grpc = grpcclient.InferenceServerClient(f"{outward}:{grpc_port}")
    with pytest.raises(InferenceServerException) as denied:
        grpc.unload_model("echo")
    assert denied.value.status() == "StatusCode.PERMISSION_DENIED" and "only on loopback" in denied.value.message()
    assert grpc.is_server_ready()  # the port does answer from there
    grpc.close()
    assert server.models()["echo"]["state"] == "ready"


def test_versions_and_splits_in_the_repository(serve) -> None:
    server = serve(f"""
models:
  - name: echo
    versions:
      - {{version: 1, handler: "{HANDLERS}:Echo"}}
      - {{version: 2, handler: "{HANDLERS}:Echo", load: lazy}}
  - {{name: other, handler: "{HANDLERS}:Echo", load: lazy}}
  - {{name: ab, split: {{variants: [{{model: echo, weight: 1}}, {{model: other, weight: 1}}]}}}}
""")
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    index = {(entry["name"], entry.get("version")): entry["state"] for entry in client.get_model_repository_index()}
    assert index[("echo", "1")] == "READY" and index[("echo", "2")] == "UNAVAILABLE"
    assert index[("other", "1")] == "UNAVAILABLE" and ("ab", "1") in index
    client.load_model("ab")  # a split loads the models it sends to
    assert client.is_model_ready("other")
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model("ab")
    assert refused.value.status() == "400" and "traffic split" in refused.value.message()
    client.unload_model("echo")  # a versioned model's name reaches its default version
    assert not client.is_model_ready("echo")
    assert_clean_log(server.log())
