"""Triton's own example client programs, run unchanged against inferd serving models of Triton's test
shapes (tests/protocols/test_triton_extensions.py's). The programs are not part of this repository:
TRITON_CLIENT_EXAMPLES names a checkout's `src/python/examples` folder (github.com/
triton-inference-server/client), and each program runs from a temporary copy of it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RunningServer, start_server
from tests.protocols.test_triton_extensions import CONFIG, LABELS

EXAMPLES = os.environ.get("TRITON_CLIENT_EXAMPLES")
pytestmark = pytest.mark.skipif(
    not EXAMPLES, reason="set TRITON_CLIENT_EXAMPLES to a checkout of Triton's client src/python/examples"
)

# The HTTP programs that test the protocol; the gRPC, shared-memory, model-control and sequence ones
# and simple_http_health_metadata.py (it wants the server to be named "triton") are left out.
PROGRAMS = [
    "simple_http_infer_client.py",
    "simple_http_string_infer_client.py",
    "simple_http_async_infer_client.py",
    "simple_http_aio_infer_client.py",
]


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("examples") / "examples"
    shutil.copytree(str(EXAMPLES), copy)
    return copy


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, example_models: Path) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("triton-programs")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    running = start_server(folder, CONFIG)
    yield running
    assert running.stop() == 0, running.log()


def run(programs: Path, server: RunningServer, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(programs / program), "-u", server.url.removeprefix("http://"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=programs)


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_program_passes(programs: Path, server: RunningServer, program: str) -> None:
    done = run(programs, server, program)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "error" not in done.stdout.lower()


def test_image_client_answers_the_top_five_labels(programs: Path, server: RunningServer, tmp_path: Path) -> None:
    if importlib.util.find_spec("attrdict") is None:  # the program patches it for Python 3.10+ itself
        pytest.skip("image_client.py needs attrdict to read the HTTP model config")
    image = pytest.importorskip("PIL.Image")
    picture = tmp_path / "picture.png"
    image.fromarray((np.random.default_rng(5).random((32, 32, 3)) * 255).astype(np.uint8)).save(picture)
    done = run(programs, server, "image_client.py", "-m", "classifier", "-c", "5", "-s", "NONE", str(picture))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line.strip() for line in done.stdout.splitlines() if " = class-" in line]
    assert len(lines) == 5 and all(line.split(" = ")[1] in LABELS for line in lines)
