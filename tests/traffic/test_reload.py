"""Weights and versions changed by a reload while clients keep sending: no request fails, and the
new weights (or the new default version) take over; a broken split is rejected and the old one
keeps serving."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx

from tests.chaos.load import Load, by_status
from tests.chaos.logs import assert_clean_log
from tests.conftest import HANDLERS, RunningServer, wait_until

from .traffic import VARIANT

ECHO = f"{HANDLERS}:Echo"
Serve = Callable[..., RunningServer]


def config(weights: tuple[int, int], versions: tuple[int, ...] = (1,), default: int | None = None) -> str:
    listed = "\n".join(f"      - {{version: {v}, handler: '{ECHO}', handler_args: {{tag: v{v}}}}}" for v in versions)
    return f"""
models:
  - name: echo
    max_batch_size: 4
    versions:
{listed}
    {f"default_version: {default}" if default else ""}
  - {{name: other, handler: "{ECHO}", max_batch_size: 4, handler_args: {{tag: other}}}}
  - name: ab
    max_batch_size: 4
    split:
      variants: [{{model: echo, weight: {weights[0]}}}, {{model: other, weight: {weights[1]}}}]
"""


def reload_with(server: RunningServer, models: str) -> httpx.Response:
    """Rewrite the server's config with other models (its server section kept), and reload."""
    server_section = server.config_path.read_text().split("\nmodels:", 1)[0]
    server.config_path.write_text(server_section + models)
    return httpx.post(server.url + "/admin/reload", json={}, timeout=120)


def tag(server: RunningServer, path: str) -> str:
    return str(server.post(path, {"inputs": ["x"]}).json()["outputs"][0]["tag"])


def load_on(server: RunningServer, path: str) -> Load:
    return Load(
        server.url, path, lambda client, n: {"inputs": [f"c{client}-{n}"]}, clients=4, duration_s=120, keep_json=True
    )


def wait_for_answers(load: Load, more: int) -> None:
    wanted = len(load.outcomes) + more
    wait_until(lambda: len(load.outcomes) >= wanted, 60, f"{more} more answers under load")


def test_weights_change_by_reload_under_load_without_a_failed_request(serve: Serve) -> None:
    server = serve(config((100, 0)))
    load = load_on(server, "/models/ab/predict").start()
    try:
        wait_for_answers(load, 50)
        answer = reload_with(server, config((0, 100)))
        assert answer.status_code == 200 and answer.json()["changed"] == ["ab"], answer.text
        assert server.post("/models/ab/predict", {"inputs": ["x"]}).headers[VARIANT] == "other"
        wait_for_answers(load, 50)
    finally:
        load.stop()
    outcomes = load.join()
    assert by_status(outcomes) == {"200": len(outcomes)}
    tags = [o.json["outputs"][0]["tag"] for o in outcomes]
    assert tags[0] == "v1" and "other" in tags  # the old weights, then the new ones
    assert server.stop() == 0
    assert_clean_log(server.log())


def test_a_version_rollout_by_reload_under_load_loses_nothing(serve: Serve) -> None:
    server = serve(config((1, 1)))
    load = load_on(server, "/models/echo/predict").start()
    try:
        wait_for_answers(load, 30)
        added = reload_with(server, config((1, 1), versions=(1, 2), default=2))  # v2 beside v1, then the default
        assert added.status_code == 200 and added.json()["added"] == ["echo@2"], added.text
        assert tag(server, "/models/echo/predict") == "v2"
        assert tag(server, "/models/echo/versions/1/predict") == "v1"
        wait_for_answers(load, 30)
        retired = reload_with(server, config((1, 1), versions=(2,)))  # v1 drains and goes
        assert retired.status_code == 200 and retired.json()["removed"] == ["echo@1"], retired.text
        wait_for_answers(load, 30)
    finally:
        load.stop()
    outcomes = load.join()
    assert by_status(outcomes) == {"200": len(outcomes)}
    tags = [o.json["outputs"][0]["tag"] for o in outcomes]
    assert tags[0] == "v1" and tags[-1] == "v2"
    assert server.post("/models/echo/versions/1/predict", {"inputs": ["x"]}).status_code == 404
    assert server.stop() == 0
    assert_clean_log(server.log())


def test_a_broken_split_is_rejected_and_the_old_one_keeps_serving(serve: Serve) -> None:
    server = serve(config((1, 0)))
    broken = config((0, 0)).replace("{model: other,", "{model: othr,")
    answer = reload_with(server, broken)

    assert answer.status_code == 400
    problems = answer.json()["problems"]
    assert "models[2].split.variants[1].model: no model named 'othr'; did you mean 'other'?" in problems
    assert "models[2].split.variants: every weight is 0; give at least one variant a positive weight" in problems
    assert tag(server, "/models/ab/predict") == "v1"


def test_a_request_begun_before_a_reload_is_answered_by_the_new_generation(serve: Serve) -> None:
    """Its route was looked up before the reload and its body arrives after the old generation
    stopped: it must reach the new one, not wait in the stopped queue until its deadline."""
    server = serve(
        config((1, 0)).replace(
            "max_batch_size: 4\n    versions:", "max_batch_size: 4\n    request_timeout_ms: 5000\n    versions:"
        )
    )
    body = b'{"inputs": ["late"]}'
    head = f"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(head.encode() + body[:5])
        changed = reload_with(server, config((1, 0)).replace("tag: v1", "tag: v1-new"))
        assert changed.status_code == 200 and changed.json()["changed"] == ["echo@1"], changed.text
        connection.sendall(body[5:])
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", answer
    assert b'"tag":"v1-new"' in rest
    assert server.stop() == 0
    assert_clean_log(server.log())
