"""Fuzz a real inferd with the Open Inference Protocol's own OpenAPI document, not inferd's.

`open_inference_protocol/open_inference_rest.yaml` is the REST specification as the protocol's
maintainers publish it (kserve/open-inference-protocol, Apache-2.0, kept verbatim with its licence).
Its path templates are written `${MODEL_NAME}`; OpenAPI tools read `{MODEL_NAME}`, so the test
rewrites them, pins the path parameters to a served model and version (a random model name can only
be a 404, which the document does not list), and runs schemathesis' own CLI with every check but
`positive_data_acceptance` (a request the document allows, such as any datatype for any input, may
still be one the model cannot take). All phases run: examples, the coverage phase (which sends
undeclared methods and expects 405 with `Allow`) and fuzzing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, example_config, start_server

SPEC = Path(__file__).resolve().parent / "open_inference_protocol" / "open_inference_rest.yaml"
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("oip"), example_config("classifier", "tiny"))
    yield running
    assert running.stop() == 0, running.log()


def openapi_template(spec_text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", r"{\1}", spec_text)


def test_the_document_is_read_as_openapi_paths() -> None:
    text = openapi_template(SPEC.read_text())
    assert "${" not in text
    assert "'/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer'" in text


@pytest.mark.parametrize("model", ["tiny", "classifier"])
def test_the_official_document_finds_no_failure(server: RunningServer, model: str, tmp_path: Path) -> None:
    spec = tmp_path / "open_inference_rest.yaml"
    spec.write_text(openapi_template(SPEC.read_text()))
    settings = tmp_path / "schemathesis.toml"
    settings.write_text(f'[parameters]\n"path.MODEL_NAME" = "{model}"\n"path.MODEL_VERSION" = "1"\n')
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(settings), "run", str(spec),
        "--url", server.url, "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--seed", "1", "--request-timeout", "30",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    report = run.stdout + run.stderr
    assert "Tested: 6" in report, report  # every operation of the document was reached
    assert run.returncode == 0, report
    assert "Traceback" not in server.log(), server.log()
