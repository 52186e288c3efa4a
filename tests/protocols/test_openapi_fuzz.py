"""Fuzz every operation in /openapi.json with schemathesis against a real inferd: no answer is a 5xx.

The document's per-model request schemas let the fuzzer build bodies the models can take as well as
every kind of malformed one (wrong shapes, datatypes, JSON types, binary headers). The examples are
bounded per operation so the whole run stays within a minute; minilm is left out for speed (its
route schemas are built by the same code as the tensor models').
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, example_config, start_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.errors import FailureGroup  # noqa: E402

TENSOR_MODELS = example_config("classifier", "tiny")  # minilm is left out: slow to fuzz

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("fuzz"), TENSOR_MODELS)
    yield running
    assert running.stop() == 0, running.log()


def test_the_document_lists_every_route(server: RunningServer) -> None:
    paths = server.get("/openapi.json").json()["paths"]
    for service in ("/models", "/healthz", "/readyz", "/metrics", "/admin/reload", "/v2", "/v2/health/ready"):
        assert service in paths
    for model in ("tiny", "classifier"):
        assert "post" in paths[f"/models/{model}/predict"]
        for suffix in ("", "/ready", "/config", "/infer"):
            assert f"/v2/models/{model}{suffix}" in paths
            assert f"/v2/models/{model}/versions/1{suffix}" in paths


def test_no_operation_answers_with_a_server_error(server: RunningServer) -> None:
    # schemathesis' own pytest plugin (from_fixture) breaks on pytest 9.2, so each operation gets a
    # Hypothesis run of its cases here: schema-valid ones and schema-breaking ones.
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: list[str] = []
    for operation in operations:
        failures += fuzz(operation)
    documented = set(server.get("/openapi.json").json()["paths"]) - {"/openapi.json"}  # schemathesis skips its source
    assert {operation.path for operation in operations} == documented
    assert not failures, "\n\n".join(failures)


def fuzz(operation: schemathesis.APIOperation) -> list[str]:
    """Every 5xx answer to the operation's cases, with a curl command that repeats it (no shrinking)."""
    failures: list[str] = []
    cases = st.one_of(operation.as_strategy(mode) for mode in GenerationMode)

    @given(cases)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        try:
            case.call_and_validate(checks=[not_a_server_error], timeout=30)
        except (FailureGroup, Exception) as failure:  # a failed check, or no answer at all
            if len(failures) < 3:
                failures.append(f"{operation.label}: {failure}\n{case.as_curl_command()}")

    run()
    return failures
