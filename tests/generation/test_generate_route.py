"""POST /models/<name>/generate against a real `inferd serve` with a tiny deterministic generator:
JSON and SSE answers, the stop rules, and the caps checked before any compute."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer


@pytest.fixture
def server(caps_server: RunningServer) -> RunningServer:
    return caps_server


def events(server: RunningServer, body: dict) -> list[tuple[str, dict]]:
    found = []
    with httpx.stream("POST", server.url + "/models/caps/generate", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                found.append((kind, json.loads(line.removeprefix("data: "))))
                kind = "message"
    return found


def test_json_answer_ends_at_the_end_token(server: RunningServer) -> None:
    answer = server.post("/models/caps/generate", {"prompt": "hello"}).json()
    assert answer["text"] == "HELLO"
    assert answer["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


def test_max_tokens_ends_with_length(server: RunningServer) -> None:
    answer = server.post("/models/caps/generate", {"prompt": "hello", "max_tokens": 3}).json()
    assert (answer["text"], answer["finish_reason"]) == ("HEL", "length")


def test_stop_string_is_cut_and_never_sent(server: RunningServer) -> None:
    answer = server.post("/models/caps/generate", {"prompt": "abcdef", "stop": ["CD"]}).json()
    assert (answer["text"], answer["finish_reason"]) == ("AB", "stop")
    streamed = events(server, {"prompt": "abcdef", "stop": "CDE", "stream": True})
    assert "".join(e["text"] for _, e in streamed) == "AB"


def test_stream_sends_one_event_per_step(server: RunningServer) -> None:
    streamed = events(server, {"prompt": "hey you", "stream": True})
    texts = [e["text"] for _, e in streamed]
    assert "".join(texts) == "HEY YOU"
    assert len(texts) == 8  # seven tokens, then the end token's (empty) event
    assert streamed[-1][1]["finish_reason"] == "stop"
    assert streamed[-1][1]["usage"]["completion_tokens"] == 7


def test_chat_messages_are_taken(server: RunningServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert server.post("/models/caps/generate", body).json()["text"] == "HI"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": "x", "max_tokens": 401}, ["max_tokens is 401", "at most 400"]),
        ({"prompt": "x" * 65}, ["65 tokens", "at most 64"]),
        ({"prompt": "x" * 65, "stream": True}, ["65 tokens", "at most 64"]),
        ({"prompt": ""}, ["empty"]),
        ({"prompt": 3}, ["prompt must be a string"]),
        ({"prompt": "x", "temperature": 5}, ["temperature", "0 to 2"]),
        ({"prompt": "x", "stop": [1]}, ["stop must be"]),
        ({"prompt": "x", "stream": "yes"}, ["stream must be"]),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_numbers(server: RunningServer, body: dict, words: list[str]) -> None:
    response = server.post("/models/caps/generate", body)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]
    assert all(word in message for word in words), message
    assert_clean_log(server.log())


def test_unknown_model_is_a_404_naming_the_generative_models(server: RunningServer) -> None:
    response = server.post("/models/nope/generate", {"prompt": "x"})
    assert response.status_code == 404
    assert "caps" in response.json()["error"]


def test_predict_routes_on_a_generative_model_say_where_to_go(server: RunningServer) -> None:
    response = server.post("/models/caps/predict", {"inputs": ["x"]})
    assert response.status_code == 422
    assert "/models/caps/generate" in response.json()["error"]


def test_token_metrics_count_what_was_generated(server: RunningServer) -> None:
    def figure(name: str) -> float:
        lines = [line for line in server.get("/metrics").text.splitlines() if line.startswith(name + '{model="caps"}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = figure("inferd_generated_tokens_total"), figure("inferd_prompt_tokens_total")
    firsts = figure("inferd_time_to_first_token_seconds_count")
    server.post("/models/caps/generate", {"prompt": "four"})
    assert figure("inferd_generated_tokens_total") == before[0] + 4
    assert figure("inferd_prompt_tokens_total") == before[1] + 4
    assert figure("inferd_time_to_first_token_seconds_count") == firsts + 1
    assert figure("inferd_running_sequences") == 0
