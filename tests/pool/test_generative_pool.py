"""The model pool with generative models (the sequence scheduler, not the batcher): a lazy one
loads on its first generation and unloads when idle; one with a sequence running is never
evicted, and a generation that finds no room gets a clear 503."""

from __future__ import annotations

import httpx

from tests.chaos.logs import assert_clean_log
from tests.conftest import wait_until
from tests.generation.conftest import GENERATORS
from tests.pool.test_model_pool import WAIT_S, holds_memory, value


def generative(name: str, extra: str = "") -> str:
    return (
        f'  - {{name: {name}, handler: "{GENERATORS}:Capitals", load: lazy, max_batch_size: 4, {extra}\n'
        f"     handler_args: {{step_delay_s: 0.05}}, generation: {{max_prompt_tokens: 64, max_tokens: 400}}}}\n"
    )


def test_a_lazy_generative_model_loads_on_its_first_generation_and_unloads_when_idle(serve) -> None:
    server = serve("models:\n" + generative("caps", "idle_unload_s: 1,"))
    assert server.models()["caps"]["state"] == "unloaded"
    answer = server.post("/models/caps/generate", {"prompt": "hello", "max_tokens": 10})
    assert answer.status_code == 200 and answer.json()["text"] == "HELLO"
    pids = [w["pid"] for w in server.models()["caps"]["workers"]]
    assert pids
    wait_until(lambda: server.models()["caps"]["state"] == "unloaded", WAIT_S, "the idle model to be unloaded")
    assert not any(holds_memory(pid) for pid in pids)
    assert value(server, "inferd_model_unloads_total", model="caps", cause="idle") == 1
    assert server.post("/models/caps/generate", {"prompt": "again", "max_tokens": 10}).json()["text"] == "AGAIN"
    assert_clean_log(server.log())


def test_a_model_generating_is_never_evicted(serve) -> None:
    server = serve(
        "server: {host: 127.0.0.1, port: 1, pool: {max_loaded_models: 1}}\nmodels:\n"
        + generative("caps")
        + generative("other")
    )
    body = {"prompt": "forever:x", "max_tokens": 400, "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=120) as client,
        client.stream("POST", "/models/caps/generate", json=body) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept open: a closed iterator would close the stream
        while not next(lines).startswith("data: "):
            pass  # until the first event: caps is generating
        refused = server.post("/models/other/generate", {"prompt": "hi", "max_tokens": 5})
        assert refused.status_code == 503, refused.text
        assert "cannot load model 'other'" in refused.json()["error"]
        assert "'caps' has 1 request(s) queued or running" in refused.json()["error"]
    wait_until(lambda: value(server, "inferd_running_sequences", model="caps") == 0, WAIT_S, "the stream to end")
    answer = server.post("/models/other/generate", {"prompt": "hi", "max_tokens": 5})  # caps is idle now: it goes
    assert answer.status_code == 200 and answer.json()["text"] == "HI"
    assert server.models()["caps"]["state"] == "unloaded"
    assert value(server, "inferd_model_evictions_total", model="caps") == 1
    assert_clean_log(server.log())
