"""The model pool on real servers: lazy loading on a first request (the others wait in the queue),
idle unloading, an unload under load that loses nothing, more models than max_loaded_models called
in turns (least recently used idle one evicted, a busy one never), a memory budget kept as the OS
reads the workers, reloads that keep an unloaded model unloaded, and the pool's metrics."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.logs import assert_clean_log
from tests.conftest import HANDLERS, RunningServer, wait_until

POOL_HANDLERS = Path(__file__).resolve().parents[1] / "models" / "pool_handlers.py"
GATED = f"{POOL_HANDLERS}:Gated"
ADMIN = {"X-Inferd-Admin": "1"}
WAIT_S = 60.0  # the longest a condition may take on a busy machine


def holds_memory(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def samples(server: RunningServer, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A metric family's samples on /metrics, by their labels."""
    found = {}
    for metric in text_string_to_metric_families(server.get("/metrics").text):
        for sample in metric.samples:
            if sample.name == family:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(server: RunningServer, family: str, **labels: str) -> float:
    return samples(server, family).get(tuple(sorted(labels.items())), 0.0)


def loaded(server: RunningServer) -> set[str]:
    return {name for name, model in server.models().items() if model["state"] not in ("unloaded", "unloading")}


def in_background(pool: concurrent.futures.Executor, server: RunningServer, model: str, item: object):
    return pool.submit(server.post, f"/models/{model}/predict", {"inputs": [item]})


def test_a_lazy_model_loads_on_its_first_request_while_the_others_wait(serve, tmp_path: Path) -> None:
    gate = tmp_path / "load-gate"
    server = serve(
        f"""
models:
  - {{name: echo, handler: "{HANDLERS}:Echo"}}
  - {{name: lazy, handler: "{GATED}", load: lazy, max_batch_size: 4, max_queue_size: 16,
     handler_args: {{load_gate: "{gate}"}}}}
  - {{name: tight, handler: "{GATED}", load: lazy, max_queue_size: 1, request_timeout_ms: 4000,
     handler_args: {{load_gate: "{tmp_path / "never"}"}}}}
"""
    )
    assert server.models()["lazy"]["state"] == "unloaded" and server.models()["lazy"]["workers"] == []
    assert server.get("/readyz").status_code == 200  # lazy models never hold readiness back
    assert value(server, "inferd_model_loaded", model="lazy") == 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        waiting = [in_background(pool, server, "lazy", n) for n in range(6)]
        wait_until(lambda: server.models()["lazy"]["queue_depth"] == 6, WAIT_S, "six requests queued")
        assert server.models()["lazy"]["state"] == "loading"
        assert server.get("/readyz").status_code == 200 and server.get("/readyz").json()["models"]["lazy"] == "loading"
        gate.touch()
        answers = [future.result() for future in waiting]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert len({a.json()["outputs"][0]["pid"] for a in answers}) == 1  # one load served them all
    assert value(server, "inferd_model_loads_total", model="lazy", cause="request") == 1
    assert value(server, "inferd_model_load_duration_seconds_count", model="lazy") == 1
    assert value(server, "inferd_model_loaded", model="lazy") == 1

    # The queue stays bounded and deadlines hold while a model loads.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = in_background(pool, server, "tight", "a")
        wait_until(lambda: server.models()["tight"]["queue_depth"] == 1, WAIT_S, "one request queued")
        full = server.post("/models/tight/predict", {"inputs": ["b"]})
        assert full.status_code == 429 and "max_queue_size" in full.json()["error"]
        assert first.result().status_code == 504
    assert_clean_log(server.log())


def test_an_idle_lazy_model_is_unloaded_and_loads_again(serve) -> None:
    server = serve(f'models:\n  - {{name: lazy, handler: "{GATED}", load: lazy, idle_unload_s: 1}}\n')
    first = server.post("/models/lazy/predict", {"inputs": ["x"]})
    assert first.status_code == 200
    pid = first.json()["outputs"][0]["pid"]
    wait_until(lambda: server.models()["lazy"]["state"] == "unloaded", WAIT_S, "the idle model to be unloaded")
    assert not holds_memory(pid)
    assert value(server, "inferd_model_unloads_total", model="lazy", cause="idle") == 1
    again = server.post("/models/lazy/predict", {"inputs": ["y"]})
    assert again.status_code == 200 and again.json()["outputs"][0]["pid"] != pid
    assert value(server, "inferd_model_loads_total", model="lazy", cause="request") == 2
    assert_clean_log(server.log())


def test_unload_answers_every_request_it_had_accepted(serve, tmp_path: Path) -> None:
    server = serve(
        f"server: {{host: 127.0.0.1, port: 1, drain_timeout_s: 120}}\n"
        f'models:\n  - {{name: gated, handler: "{GATED}", max_batch_size: 2}}\n'
    )
    pids = server.worker_pids("gated")
    gate = tmp_path / "hold"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        accepted = [in_background(pool, server, "gated", {"hold": str(gate), "n": n}) for n in range(5)]
        wait_until(lambda: value(server, "inferd_inflight_requests", model="gated") == 5, WAIT_S, "five requests in")
        unloading = pool.submit(
            httpx.post, server.url + "/v2/repository/models/gated/unload", headers=ADMIN, timeout=60
        )
        wait_until(lambda: server.models()["gated"]["state"] == "unloading", WAIT_S, "the unload to start")
        late = server.post("/models/gated/predict", {"inputs": ["late"]})
        assert late.status_code == 503 and "model 'gated' is unloading" in late.json()["error"]
        assert not unloading.done() and all(holds_memory(pid) for pid in pids)  # it waits for them
        gate.touch()
        assert [f.result().status_code for f in accepted] == [200] * 5
        assert unloading.result().status_code == 200
    assert not any(holds_memory(pid) for pid in pids)
    assert server.models()["gated"]["state"] == "unloaded"
    assert value(server, "inferd_model_unloads_total", model="gated", cause="repository") == 1
    assert_clean_log(server.log())


def test_more_models_than_the_budget_take_turns(serve, tmp_path: Path) -> None:
    lazy = "\n".join(f'  - {{name: {m}, handler: "{GATED}", load: lazy}}' for m in ("a", "b", "c"))
    server = serve(f"server: {{host: 127.0.0.1, port: 1, pool: {{max_loaded_models: 2}}}}\nmodels:\n{lazy}\n")

    def call(model: str) -> int:
        answer = server.post(f"/models/{model}/predict", {"inputs": ["x"]})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["outputs"][0]["pid"])

    pids = {model: call(model) for model in ("a", "b")}
    for model, evicted in (("c", "a"), ("a", "b"), ("b", "c"), ("c", "a")):
        pids[model] = call(model)
        assert loaded(server) == {"a", "b", "c"} - {evicted}  # the least recently used went
        assert not holds_memory(pids[evicted])
    assert value(server, "inferd_model_evictions_total", model="a") == 2
    assert value(server, "inferd_model_unloads_total", model="b", cause="eviction") == 1

    # Loaded now: b, c. A model with work in flight is never evicted, however long ago it was used.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        holding_b = in_background(pool, server, "b", {"hold": str(tmp_path / "b")})
        wait_until(lambda: value(server, "inferd_inflight_requests", model="b") == 1, WAIT_S, "b busy")
        call("c")  # b is now the least recently used
        call("a")
        assert loaded(server) == {"a", "b"}  # c went, though b was used less recently
        holding_a = in_background(pool, server, "a", {"hold": str(tmp_path / "a")})
        wait_until(lambda: value(server, "inferd_inflight_requests", model="a") == 1, WAIT_S, "a busy")
        refused = server.post("/models/c/predict", {"inputs": ["x"]})
        assert refused.status_code == 503
        message = refused.json()["error"]
        assert "cannot load model 'c'" in message and "max_loaded_models (2)" in message
        assert "'a' has 1 request(s) queued or running" in message and "'b' has 1" in message
        (tmp_path / "a").touch()
        (tmp_path / "b").touch()
        assert holding_a.result().status_code == 200 and holding_b.result().status_code == 200
    call("c")  # idle again: room is made
    assert len(loaded(server)) == 2
    assert_clean_log(server.log())


def test_a_memory_budget_holds_as_the_os_reads_the_workers(serve) -> None:
    ballast = f"{POOL_HANDLERS}:Ballast"
    models = "\n".join(f'  - {{name: {m}, handler: "{ballast}", load: lazy, handler_args: {{mb: 500}}}}' for m in "abc")
    server = serve(f"server: {{host: 127.0.0.1, port: 1, pool: {{max_memory_mb: {{cpu: 1300}}}}}}\nmodels:\n{models}\n")
    budget_bytes = 1300 * 2**20
    for model in "abcab":
        answer = server.post(f"/models/{model}/predict", {"inputs": ["x"]})
        assert answer.status_code == 200, answer.text
        described = server.models()
        now_loaded = [name for name, m in described.items() if m["state"] == "ready"]
        assert model in now_loaded and len(now_loaded) <= 2  # 3 x 500 MiB can never fit
        assert sum(described[name]["memory_bytes"]["cpu"] for name in now_loaded) <= budget_bytes
        for name in now_loaded:
            measured = described[name]["memory_bytes"]["cpu"]
            assert measured >= 500 * 2**20  # the ballast is in the figure
            pids = [w["pid"] for w in described[name]["workers"]]
            by_os = sum(psutil.Process(pid).memory_full_info().uss for pid in pids)
            assert abs(by_os - measured) < 0.1 * measured, (name, by_os, measured)
    assert sum(value(server, "inferd_model_evictions_total", model=m) for m in "abc") >= 3
    memory = samples(server, "inferd_model_memory_bytes")
    assert memory and all(dict(labels)["device"] == "cpu" for labels in memory)
    assert_clean_log(server.log())


def test_a_reload_keeps_an_unloaded_model_unloaded(serve) -> None:
    text = 'models:\n  - {{name: lazy, handler: "{h}", load: lazy, handler_args: {{tag: {tag}}}}}\n'
    server = serve(text.format(h=GATED, tag="one"))

    def reload_with(old: str, new: str) -> dict[str, object]:
        server.config_path.write_text(server.config_path.read_text().replace(f"tag: {old}", f"tag: {new}"))
        answer = httpx.post(server.url + "/admin/reload", headers=ADMIN, timeout=60)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    assert reload_with("one", "two")["changed"] == ["lazy"]
    assert server.models()["lazy"]["state"] == "unloaded" and server.models()["lazy"]["workers"] == []
    assert value(server, "inferd_model_loads_total", model="lazy", cause="reload") == 0
    answer = server.post("/models/lazy/predict", {"inputs": ["x"]})
    assert answer.status_code == 200 and answer.json()["outputs"][0]["tag"] == "two"
    assert reload_with("two", "three")["changed"] == ["lazy"]  # loaded: its new generation loads
    assert server.models()["lazy"]["state"] == "ready"
    assert server.post("/models/lazy/predict", {"inputs": ["y"]}).json()["outputs"][0]["tag"] == "three"
    assert value(server, "inferd_model_loads_total", model="lazy", cause="reload") == 1
    assert_clean_log(server.log())


def test_pool_metrics_are_exported(serve: Callable[..., RunningServer]) -> None:
    server = serve(
        f'models:\n  - {{name: echo, handler: "{HANDLERS}:Echo"}}\n  - {{name: lazy, handler: "{GATED}", load: lazy}}\n'
    )
    assert value(server, "inferd_model_loads_total", model="echo", cause="start") == 1
    assert value(server, "inferd_model_loaded", model="echo") == 1
    assert value(server, "inferd_model_loaded", model="lazy") == 0
    assert value(server, "inferd_model_memory_bytes", model="echo", device="cpu") > 0
    assert value(server, "inferd_model_load_duration_seconds_count", model="echo") == 1
