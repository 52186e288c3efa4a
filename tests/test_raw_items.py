"""Large raw items (a body's bytes, a v2 BYTES element) reach a handler's worker through shared
memory rather than the socket, as plain bytes, each request its own: served for real."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from inferd.segments import THRESHOLD_BYTES
from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, start_server

DIGEST = '''
import hashlib

from inferd import Handler


class Digest(Handler):
    def predict(self, items):
        return [f"{type(item).__name__} {len(item)} {hashlib.sha256(item).hexdigest()}" for item in items]
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("raw_items")
    (folder / "digest.py").write_text(DIGEST)
    server = start_server(
        folder, f"models:\n  - {{name: digest, handler: {folder}/digest.py:Digest, max_batch_size: 8}}\n"
    )
    yield server
    assert server.stop() == 0
    assert_clean_log(server.log())


def segment_bytes(server: RunningServer) -> float:
    pattern = r'^inferd_channel_bytes_total\{direction="to_worker",model="digest",path="segment"\} (\S+)$'
    found = re.search(pattern, server.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def expected(body: bytes) -> str:
    return f"bytes {len(body)} {hashlib.sha256(body).hexdigest()}"


def post_raw(server: RunningServer, body: bytes) -> str:
    answer = httpx.post(
        server.url + "/models/digest/predict",
        content=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["outputs"])


@pytest.mark.parametrize("size", [THRESHOLD_BYTES - 1, THRESHOLD_BYTES, 3 * 1024 * 1024 + 5])
def test_a_raw_body_arrives_whole_and_large_ones_in_a_segment(server: RunningServer, size: int) -> None:
    body = os.urandom(size)
    before = segment_bytes(server)
    assert post_raw(server, body) == expected(body)
    assert segment_bytes(server) - before == (size if size >= THRESHOLD_BYTES else 0)


def test_concurrent_large_bodies_each_get_their_own_bytes(server: RunningServer) -> None:
    bodies = [os.urandom(THRESHOLD_BYTES + n * 4096) for n in range(24)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: post_raw(server, body), bodies))
    assert answers == [expected(body) for body in bodies]


def test_a_large_v2_bytes_element_arrives_whole_in_a_segment(server: RunningServer) -> None:
    element = os.urandom(THRESHOLD_BYTES + 3)
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton_http.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([element], dtype=object), binary_data=True)
    before = segment_bytes(server)
    result = client.infer("digest", [tensor])
    assert result.as_numpy(result.get_response()["outputs"][0]["name"])[0].decode() == expected(element)
    assert segment_bytes(server) - before == len(element)
