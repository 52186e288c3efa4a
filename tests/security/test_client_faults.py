"""A client's faults are never a server's: malformed lengths get a 4xx, a client that leaves
mid-body is a 499 in the log and the metrics, and neither leaves a traceback in the log."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RunningServer, wait_until
from tests.security.probes import connect, has_answer, head, metric, read_answer

V2_HEADER = "Inference-Header-Content-Length"
DIGITS = "9" * 5000  # past Python's 4,300-digit limit on int()


def _requests(server: RunningServer, model: str, code: str) -> float:
    return metric(server, "inferd_requests_total", model=model, code=code)


def test_an_inference_header_length_of_5000_digits_is_a_400(server: RunningServer) -> None:
    answer = httpx.post(server.url + "/v2/models/tiny/infer", content=b"{}", headers={V2_HEADER: DIGITS}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "Inference-Header-Content-Length has 5000 digits" in answer.json()["error"]
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("length", [DIGITS, "12a", "-1", "\uff11\uff12"])
def test_a_malformed_content_length_is_a_4xx_or_a_close(server: RunningServer, length: str) -> None:
    with connect(server) as sock:
        sock.sendall(head("/models/tiny/predict", {"Content-Length": length}))
        wait_until(lambda: has_answer(sock), 30, "an answer or a close")
        try:
            data = sock.recv(65536)  # b"": closed
        except ConnectionResetError:
            data = b""
    assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:200]
    assert b"500" not in data.split(b"\r\n", 1)[0]
    assert "Traceback" not in server.log()
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200


def test_a_client_leaving_mid_body_is_a_499_not_a_500(server: RunningServer) -> None:
    gone_before, faults_before = _requests(server, "sizes", "499"), _requests(server, "sizes", "500")
    lines_before = server.log().count(": 499 POST /models/sizes/predict: the client disconnected after sending")
    for _ in range(3):
        with connect(server) as sock:
            sock.sendall(head("/models/sizes/predict", {"Content-Length": "1000"}) + b'{"inputs": ["half')
            wait_until(lambda: metric(server, "inferd_request_bytes_held") == 1000, 30, "the body to be reserved")
    wait_until(lambda: _requests(server, "sizes", "499") - gone_before == 3, 30, "three 499s")
    wait_until(lambda: metric(server, "inferd_request_bytes_held") == 0, 30, "the bytes to be released")
    log = server.log()
    assert _requests(server, "sizes", "500") == faults_before
    assert log.count(": 499 POST /models/sizes/predict: the client disconnected after sending") - lines_before == 3
    assert "Traceback" not in log and " ERROR " not in log


def test_a_client_leaving_mid_chunk_is_a_499(server: RunningServer) -> None:
    gone_before = _requests(server, "sizes", "499")
    with connect(server) as sock:
        sock.sendall(head("/models/sizes/predict", {"Transfer-Encoding": "chunked"}) + b'10\r\n{"inputs": ["ab')
        wait_until(lambda: metric(server, "inferd_request_bytes_held") > 0, 30, "the first chunk to be reserved")
    wait_until(lambda: _requests(server, "sizes", "499") - gone_before == 1, 30, "a 499")
    assert "Traceback" not in server.log()


def test_a_refused_client_can_send_its_next_request_on_the_same_connection(server: RunningServer) -> None:
    """A 413 from Content-Length alone; uvicorn reads and drops the body, and keeps the connection."""
    body = b'{"inputs": [' + b"0.5," * 40_000 + b"0.5]}"
    with connect(server) as sock:
        sock.sendall(head("/models/tiny/predict", {"Content-Length": str(len(body))}) + body)
        status, _, answer = read_answer(sock)
        small = b'{"inputs": [[' + b",".join([b"0.5"] * 16) + b"]]}"
        sock.sendall(head("/models/tiny/predict", {"Content-Length": str(len(small))}) + small)
        second, _, _ = read_answer(sock)
    assert (status, second) == (413, 200), answer
