"""A plain handler whose predict yields streams with `"stream": true` on its predict route: one SSE
event per yield, the chunks gathered without it, the generator closed when its client leaves, and
an error event when its worker dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, start_server, wait_until
from tests.generation.conftest import YIELDERS
from tests.generation.test_cancellation_and_faults import Reader

EVENT_TIMEOUT_S = 60.0


def spell_config(delay_s: float = 0.0) -> str:
    return f"""
models:
  - name: spell
    handler: {YIELDERS}:Spell
    handler_args: {{delay_s: {delay_s}}}
    max_batch_size: 8
  - name: echo
    handler: {{HANDLERS}}:Echo
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("spell"), spell_config())
    yield running
    assert running.stop() == 0, running.log()
    assert_clean_log(running.log())


def events(server: RunningServer, inputs: object) -> list[tuple[str, dict]]:
    """Every event of one streamed predict, read to its end."""
    found, kind = [], "message"
    body = {"inputs": inputs, "stream": True}
    with httpx.stream("POST", server.url + "/models/spell/predict", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                found.append((kind, json.loads(line.removeprefix("data: "))))
                kind = "message"
    return found


@contextlib.asynccontextmanager
async def open_stream(server: RunningServer, inputs: object) -> AsyncIterator[Reader]:
    body = {"inputs": inputs, "stream": True}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as client,
        client.stream("POST", "/models/spell/predict", json=body) as response,
    ):
        assert response.status_code == 200, await response.aread()
        yield Reader(response.aiter_lines())


def test_each_yield_is_one_event_with_each_items_chunk(server: RunningServer) -> None:
    assert events(server, ["abc", "de"]) == [
        ("message", {"outputs": ["a", "d"]}),
        ("message", {"outputs": ["b", "e"]}),
        ("message", {"outputs": ["c", ""]}),
        ("done", {"chunks": 3}),
    ]


def test_a_bare_item_streams_bare_chunks(server: RunningServer) -> None:
    assert events(server, "hi") == [
        ("message", {"outputs": "h"}),
        ("message", {"outputs": "i"}),
        ("done", {"chunks": 2}),
    ]


def test_without_stream_each_item_gets_its_chunks_gathered(server: RunningServer) -> None:
    response = server.post("/models/spell/predict", {"inputs": ["abc", "de"]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == [["a", "b", "c"], ["d", "e", ""]]


def test_concurrent_streams_each_get_their_own_chunks(server: RunningServer) -> None:
    words = ["one", "two", "three", "four", "five", "six"]
    with ThreadPoolExecutor(len(words)) as pool:
        streamed = list(pool.map(lambda word: events(server, [word]), words))
    for word, found in zip(words, streamed):  # a word that shares a call with a longer one gets "" after its end
        assert "".join(event["outputs"][0] for _, event in found[:-1]) == word
        assert found[-1] == ("done", {"chunks": len(found) - 1}) and len(found) - 1 >= len(word)


def test_bad_requests_are_json_errors_before_any_event(server: RunningServer) -> None:
    undecodable = server.post("/models/spell/predict", {"inputs": [5], "stream": True})
    assert undecodable.status_code == 422 and "non-empty string" in undecodable.json()["error"]
    refused = server.post("/models/spell/predict", {"inputs": ["bad"], "stream": True})
    assert refused.status_code == 422 and "'bad' is refused" in refused.json()["error"]
    not_a_flag = server.post("/models/spell/predict", {"inputs": ["x"], "stream": "yes"})
    assert not_a_flag.status_code == 400 and '"stream" must be true or false' in not_a_flag.json()["error"]
    not_yielding = server.post("/models/echo/predict", {"inputs": ["x"], "stream": True})
    assert not_yielding.status_code == 400 and "does not stream" in not_yielding.json()["error"]


def test_a_request_that_breaks_a_shared_predict_fails_alone(serve: Callable[..., RunningServer]) -> None:
    server = serve(spell_config(delay_s=0.05))
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(server.post, "/models/spell/predict", {"inputs": ["bad"], "stream": True})
        good = pool.submit(events, server, ["fine"])
        assert bad.result().status_code == 422
        assert [event["outputs"][0] for _, event in good.result()[:-1]] == list("fine")
    assert_clean_log(server.log())


async def test_a_client_that_leaves_closes_the_generator(serve: Callable[..., RunningServer]) -> None:
    server = serve(spell_config(delay_s=0.05))
    async with open_stream(server, ["forever"]) as leaving:
        for _ in range(2):
            kind, event = await asyncio.wait_for(leaving.next_event(), EVENT_TIMEOUT_S)
            assert kind == "message" and event["outputs"][0] in "forever"
    wait_until(lambda: "spell: closed after" in server.log(), 60, "the generator to be closed")
    cancelled = 'inferd_sequences_cancelled_total{model="spell"} 1.0'
    wait_until(lambda: cancelled in server.get("/metrics").text, 30, "the cancellation to be counted")
    assert [event["outputs"][0] for _, event in events(server, ["ok"])[:-1]] == ["o", "k"]
    assert_clean_log(server.log())


async def test_a_worker_that_dies_mid_stream_ends_it_with_an_error_event(serve: Callable[..., RunningServer]) -> None:
    server = serve(spell_config())
    found = events(server, ["dies"])
    assert [kind for kind, _ in found] == ["message", "message", "error"]
    assert "died" in found[-1][1]["error"]
    server.wait_ready(120)  # the worker is replaced, and serves again
    assert server.post("/models/spell/predict", {"inputs": ["ok"]}).json()["outputs"] == [["o", "k"]]
    assert_clean_log(server.log())
