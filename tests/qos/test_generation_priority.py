"""Priorities on the generation routes (inferd's own and OpenAI's): the only sequence slot is held
by a stream while two requests queue, and the higher priority one starts (and ends) first once
the stream's client leaves."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import start_server, wait_until
from tests.generation.conftest import capitals_config

openai = pytest.importorskip("openai")


def test_a_queued_sequence_of_higher_priority_starts_first(tmp_path: Path) -> None:
    server = start_server(tmp_path, capitals_config(max_batch_size=1, step_delay_s=0.05))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    finished: dict[str, float] = {}

    def chat(name: str, priority: str) -> None:
        client.chat.completions.create(model="caps", messages=[{"role": "user", "content": name}],
                                       extra_headers={"X-Priority": priority})  # fmt: skip
        finished[name] = time.monotonic()

    def generate(name: str, priority: str) -> None:
        answer = httpx.post(f"{server.url}/models/caps/generate", json={"prompt": name},
                            headers={"X-Priority": priority}, timeout=60)  # fmt: skip
        assert answer.status_code == 200, answer.text
        finished[name] = time.monotonic()

    def queue_depth() -> int:
        return int(server.models()["caps"]["queue_depth"])

    try:
        with httpx.stream("POST", f"{server.url}/models/caps/generate", timeout=60,
                          json={"prompt": "forever:x", "max_tokens": 400, "stream": True}) as holding:  # fmt: skip
            lines = holding.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)  # the slot is taken
            with ThreadPoolExecutor(2) as pool:
                low = pool.submit(generate, "low", "3")
                wait_until(lambda: queue_depth() == 1, 30, "the low request queued")
                high = pool.submit(chat, "high", "1")
                wait_until(lambda: queue_depth() == 2, 30, "the high request queued")
                holding.close()  # the client leaves: its sequence ends and frees the slot
                low.result(60), high.result(60)
        assert finished["high"] < finished["low"]
    finally:
        server.stop()
    assert_clean_log(server.log())


def test_bad_priorities_on_the_generation_routes_are_400s(tmp_path: Path) -> None:
    server = start_server(tmp_path, capitals_config())
    try:
        answer = httpx.post(f"{server.url}/models/caps/generate", json={"prompt": "a"}, headers={"X-Priority": "5"})
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("the X-Priority header: '5' is not a priority of model 'caps'")
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="caps", prompt="a", extra_headers={"X-Priority": "x"})
        assert "from 1 (highest) to 3 (lowest)" in str(caught.value)
    finally:
        server.stop()
    assert_clean_log(server.log())
