"""Streams under the faults that matter: clients leaving mid-stream free their slots at once, a
worker dying mid-generation ends its streams with an error event (never a hang), SIGTERM lets
running generations finish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable

import httpx

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, wait_until
from tests.generation.conftest import capitals_config

FIRST_EVENT_TIMEOUT_S = 60.0


class Reader:
    """One SSE stream, read event by event."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines

    async def next_event(self) -> tuple[str, dict]:
        kind = "message"
        async for line in self._lines:
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                return kind, json.loads(line.removeprefix("data: "))
        raise AssertionError("the stream ended without another event")


@contextlib.asynccontextmanager
async def open_stream(server: RunningServer, prompt: str, max_tokens: int) -> AsyncIterator[Reader]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as client,
        client.stream("POST", "/models/caps/generate", json=body) as response,
    ):
        assert response.status_code == 200, await response.aread()
        yield Reader(response.aiter_lines())


def running_sequences(server: RunningServer) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith('inferd_running_sequences{model="caps"}'):
            return float(line.split()[-1])
    raise AssertionError("no inferd_running_sequences for caps")


async def test_disconnects_free_slots_for_new_requests(serve: Callable[..., RunningServer]) -> None:
    server = serve(capitals_config(max_batch_size=8, step_delay_s=0.05))
    async with contextlib.AsyncExitStack() as staying:
        leaving = contextlib.AsyncExitStack()
        readers = [await (staying if i % 2 else leaving).enter_async_context(
            open_stream(server, f"forever:{i}", 400)) for i in range(8)]  # fmt: skip
        for reader in readers:
            await asyncio.wait_for(reader.next_event(), FIRST_EVENT_TIMEOUT_S)
        await leaving.aclose()  # four clients hang up mid-stream
        # All 8 slots were taken: the 4 new streams can start only in the slots the 4 left.
        newcomers = [await staying.enter_async_context(open_stream(server, f"forever:new{i}", 400)) for i in range(4)]
        for reader in newcomers:
            kind, event = await asyncio.wait_for(reader.next_event(), FIRST_EVENT_TIMEOUT_S)
            assert kind == "message" and event["text"]
        for reader in readers[1::2]:  # the four that stayed go on
            kind, event = await asyncio.wait_for(reader.next_event(), FIRST_EVENT_TIMEOUT_S)
            assert kind == "message" and "finish_reason" not in event
        assert running_sequences(server) == 8
    wait_until(lambda: running_sequences(server) == 0, 60, "every sequence to be cancelled")
    assert_clean_log(server.log())


async def test_a_worker_killed_mid_stream_ends_each_stream_with_an_error(serve: Callable[..., RunningServer]) -> None:
    server = serve(capitals_config(max_batch_size=4, step_delay_s=0.05))
    async with open_stream(server, "forever:bystander", 400) as bystander:
        await asyncio.wait_for(bystander.next_event(), FIRST_EVENT_TIMEOUT_S)
        async with open_stream(server, "die:now", 400) as dying:
            kinds = []
            while not kinds or kinds[-1] == "message":
                kinds.append((await asyncio.wait_for(dying.next_event(), FIRST_EVENT_TIMEOUT_S))[0])
            assert kinds[-1] == "error" and len(kinds) > 1
        while (event := await asyncio.wait_for(bystander.next_event(), FIRST_EVENT_TIMEOUT_S))[0] == "message":
            assert "finish_reason" not in event[1]
        assert "died" in event[1]["error"]
    server.wait_ready(120)  # the worker is replaced, and serves again
    assert server.post("/models/caps/generate", {"prompt": "again"}).json()["text"] == "AGAIN"
    assert_clean_log(server.log())


async def test_sigterm_lets_running_generations_finish(serve: Callable[..., RunningServer]) -> None:
    server = serve(capitals_config(step_delay_s=0.05))
    async with open_stream(server, "forever:drain", 40) as reader:
        await asyncio.wait_for(reader.next_event(), FIRST_EVENT_TIMEOUT_S)
        server.process.send_signal(signal.SIGTERM)
        while "finish_reason" not in (event := (await asyncio.wait_for(reader.next_event(), 60))[1]):
            assert "error" not in event
        assert event["finish_reason"] == "length" and event["usage"]["completion_tokens"] == 40
    assert server.process.wait(60) == 0


def test_a_sequence_that_made_nothing_is_retried_once(serve: Callable[..., RunningServer]) -> None:
    server = serve(capitals_config())
    response = server.post("/models/caps/generate", {"prompt": "diefirst:x"})
    assert response.status_code == 503, response.text
    assert "died" in response.json()["error"]
    assert server.log().count("retrying 1 sequence(s) once") == 1  # the retry died too: no second retry
    server.wait_ready(120)
    assert server.post("/models/caps/generate", {"prompt": "fine"}).json()["text"] == "FINE"
    assert_clean_log(server.log())


def test_a_step_that_raises_is_a_500_and_one_log_line(serve: Callable[..., RunningServer]) -> None:
    config = capitals_config().replace(":Capitals", ":BrokenStep")
    server = serve(config)
    response = server.post("/models/caps/generate", {"prompt": "x"})
    assert response.status_code == 500
    assert "the step is broken" in response.json()["error"]
    streamed = httpx.post(server.url + "/models/caps/generate", json={"prompt": "x", "stream": True}, timeout=60)
    assert streamed.status_code == 500  # nothing was sent yet: still a JSON error, not a stream
    assert_clean_log(server.log())
