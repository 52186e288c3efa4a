"""/openapi.json lists every route of the route tables the router serves (the OpenAI-compatible
ones, generation, v2 statistics, system shared memory, the model repository), each with the
methods the route takes, as a document schemathesis loads; and none of those operations answers a
5xx to fuzzed requests."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from inferd.protocols import generate, openai, repository, shm_routes, v2
from inferd.protocols.routing import Route
from tests.conftest import RunningServer, start_server
from tests.generation.conftest import GENERATORS, YIELDERS

schemathesis = pytest.importorskip("schemathesis")
from tests.protocols.test_openapi_fuzz import fuzz  # noqa: E402

CONFIG = f"""
models:
  - name: caps
    handler: {GENERATORS}:Capitals
    max_batch_size: 4
    generation: {{max_prompt_tokens: 64, max_tokens: 32, default_max_tokens: 8}}
  - name: spell
    handler: {YIELDERS}:Spell
    max_batch_size: 4
  - name: echo
    handler: {{HANDLERS}}:Echo
    max_batch_size: 4
"""
MODELS = ("caps", "spell", "echo")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("openapi"), CONFIG)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def paths(server: RunningServer) -> dict[str, Any]:
    document: dict[str, Any] = server.get("/openapi.json").json()
    return document["paths"]


def table_routes() -> list[Route]:
    """Every route of the tables, built as the router builds them (their endpoints are not run)."""
    daemon: Any = SimpleNamespace(shared_memory=None)
    _, every_model = v2.model_routes(daemon)
    repository_routes = [*repository.routes(daemon), *repository.model_routes(daemon).values()]
    return [
        *openai.routes(daemon),
        *v2.routes(daemon),
        every_model,
        *shm_routes.table(daemon).values(),
        *repository_routes,
    ]


def test_every_route_of_the_tables_is_listed_with_its_methods(paths: dict[str, Any]) -> None:
    for route in table_routes():
        assert route.path in paths, route.path
        assert set(paths[route.path]) == {method.lower() for method in route.methods}, route.path
        for operation in paths[route.path].values():
            assert not operation["summary"].startswith(("GET ", "POST ")), f"{route.path} has no description"


def test_each_model_gets_its_own_routes(paths: dict[str, Any]) -> None:
    by_suffix, _ = v2.model_routes(SimpleNamespace())
    for model in MODELS:
        for prefix in (f"/v2/models/{model}", f"/v2/models/{model}/versions/1"):
            for suffix, route in by_suffix.items():
                path = f"{prefix}/{suffix}".rstrip("/")
                assert set(paths[path]) == {method.lower() for method in route.methods}, path
    generate_path = generate.route_of(SimpleNamespace()).path
    assert "post" in paths[generate_path.replace("{name}", "caps")]
    assert generate_path.replace("{name}", "echo") not in paths  # only generative models generate
    assert (
        "stream"
        in paths["/models/spell/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )


def test_named_region_routes_declare_their_path_parameter(paths: dict[str, Any]) -> None:
    for path, operations in paths.items():
        if "{name}" in path:
            for operation in operations.values():
                assert {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}} in operation[
                    "parameters"
                ]


def test_the_model_fields_name_the_models_that_answer(paths: dict[str, Any]) -> None:
    def model_field(path: str) -> Any:
        return paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["model"]

    assert model_field("/v1/chat/completions")["enum"] == ["caps"]
    assert model_field("/v1/completions")["enum"] == ["caps"]
    assert model_field("/v1/embeddings")["enum"] == ["echo", "spell"]


def test_the_new_operations_answer_no_server_error(server: RunningServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    listed = {route.path for route in table_routes()} | {"/models/caps/generate", "/v2/models/caps/stats"}
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: list[str] = []
    for operation in operations:
        if operation.path in listed:
            failures += fuzz(operation)
    assert {operation.path for operation in operations} >= listed
    assert not failures, "\n\n".join(failures)
