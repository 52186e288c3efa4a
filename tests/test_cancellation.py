"""Clients that hang up: a queued request whose client left is never computed, and is counted; a
batch already running finishes. A real server, one worker, clients that close their sockets."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.conftest import RunningServer, wait_until

RECORDER = '''
import os
import time

from inferd import Handler


class Recorder(Handler):
    """Writes each item it computes to a journal; holds a batch with "block" until a gate file exists."""

    def predict(self, items):
        journal, gate = self.handler_args["journal"], self.handler_args["gate"]
        with open(journal, "a") as out:
            out.writelines(f"start {item}\\n" for item in items)
        while "block" in items and not os.path.exists(gate):
            time.sleep(0.01)
        with open(journal, "a") as out:
            out.writelines(f"done {item}\\n" for item in items)
        return items
'''
CONFIG = """
models:
  - name: rec
    handler: "{recorder}:Recorder"
    handler_args: {{journal: "{journal}", gate: "{gate}"}}
    max_batch_size: 1
"""


def send_and_hold(server: RunningServer, path: str, document: object) -> socket.socket:
    """A client that sends its whole request and then waits: its socket stays open until closed."""
    body = json.dumps(document).encode()
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def v2_items(*items: str) -> dict:
    return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [len(items)], "data": list(items)}]}


def metric(server: RunningServer, line_start: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def test_queued_requests_of_clients_that_left_are_never_computed(serve, tmp_path: Path) -> None:
    recorder, journal, gate = tmp_path / "recorder.py", tmp_path / "journal.txt", tmp_path / "gate"
    recorder.write_text(RECORDER)
    journal.touch()
    server = serve(CONFIG.format(recorder=recorder, journal=journal, gate=gate))
    journal.write_text("")  # nothing computed so far counts

    running = send_and_hold(server, "/models/rec/predict", {"inputs": ["block"]})
    wait_until(lambda: "start block" in journal.read_text(), 30, "the blocking batch to run")
    queued = [
        send_and_hold(server, "/models/rec/predict", {"inputs": ["gone-1"]}),
        send_and_hold(server, "/models/rec/predict", {"inputs": ["gone-2"]}),
        send_and_hold(server, "/v2/models/rec/infer", v2_items("gone-3")),
    ]
    wait_until(lambda: server.models()["rec"]["queue_depth"] == 3, 30, "three queued requests")
    for sock in queued:
        sock.close()
    wait_until(lambda: server.models()["rec"]["queue_depth"] == 0, 30, "the queue to empty")
    assert metric(server, 'inferd_requests_cancelled_total{model="rec"}') == 3

    running.close()  # its batch is running: it finishes, its answer goes nowhere
    gate.touch()
    wait_until(lambda: "done block" in journal.read_text(), 30, "the running batch to finish")
    after = server.post("/models/rec/predict", {"inputs": ["after"]})
    assert after.status_code == 200 and after.json() == {"outputs": ["after"]}

    assert journal.read_text().split("\n") == ["start block", "done block", "start after", "done after", ""]
    answered_499 = 'inferd_requests_total{code="499",model="rec",protocol="http"}'
    wait_until(lambda: metric(server, answered_499) == 4, 10, "4 answers of 499")
    assert metric(server, 'inferd_requests_cancelled_total{model="rec"}') == 3  # the running one is not
    assert metric(server, 'inferd_requests_total{code="200",model="rec",protocol="http"}') == 1
    assert server.log().count("499 POST") == 4  # one line each


def test_a_client_that_leaves_halfway_through_its_body_is_a_499_not_a_bug(serve) -> None:
    server = serve('models:\n  - {name: echo, handler: "{HANDLERS}:Echo"}\n')
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"inputs\"")
    answered_499 = 'inferd_requests_total{code="499",model="echo",protocol="http"}'
    wait_until(lambda: metric(server, answered_499) == 1, 30, "the 499")
    assert "the client disconnected after sending 9 of 100 body bytes" in server.log()
    assert "Traceback" not in server.log() and "internal error" not in server.log()
