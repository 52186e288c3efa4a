"""The status page in a real headless Chromium against real `inferd serve` processes: each model's
row with its state and queue depth, its workers drawn on the CPUs they are pinned to, live rates, a
model that became unavailable, the API key, and (from a recorded status document, as no GPU is
here) GPU memory bars. Each test leaves a screenshot, named at the end of the test output."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferd.messages import GpuMemory
from inferd.protocols.status_routes import PAGE_TYPE, StatusPage
from inferd.status import gpu_memory, worker_view
from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, wait_until
from tests.status.browser import Browser, Tab
from tests.status.screenshots import keep_screenshot

# What the test reads from the rendered DOM (the page's own code is not asked).
ROWS = """[...document.querySelectorAll('#models tbody tr')].map(tr => ({
  model: tr.dataset.model, version: tr.dataset.version,
  state: tr.querySelector('.state').dataset.state, state_text: tr.querySelector('.state').textContent,
  workers: tr.querySelector('.workers').textContent, queue: tr.querySelector('.queue').textContent,
  rps: tr.querySelector('.rps').textContent, p50: tr.querySelector('.p50').textContent,
  p99: tr.querySelector('.p99').textContent, gpu: tr.querySelector('.gpu').textContent}))"""
CELLS = """Object.fromEntries([...document.querySelectorAll('#SECTION .cell')].map(cell => [
  cell.dataset.ATTRIBUTE, [...cell.querySelectorAll('.worker')].map(w => ({
    model: w.dataset.model, slot: w.dataset.slot, state: w.dataset.state, busy: w.classList.contains('busy')}))]))"""
CPU_CELLS = CELLS.replace("SECTION", "cpus").replace("ATTRIBUTE", "cpu")
GPU_CELLS = CELLS.replace("SECTION", "gpus").replace("ATTRIBUTE", "gpu")
NO_FIGURE = "\u2013"  # the en dash the page writes for a figure it does not have yet


def row_where(model: str, condition: str) -> str:
    """A DOM condition on one model's row (`row` in `condition`)."""
    return f"(() => {{ const row = document.querySelector('#models tr[data-model=\"{model}\"]'); return !!row && ({condition}); }})()"


def cell_text(model: str, cell: str) -> str:
    return f"document.querySelector('#models tr[data-model=\"{model}\"] .{cell}')?.textContent"


def rows_of(browser: Browser, tab: Tab) -> dict[str, dict[str, str]]:
    return {row["model"]: row for row in browser.evaluate(tab, ROWS)}


def shoot(browser: Browser, tab: Tab, tmp_path: Path, test: str) -> None:
    keep_screenshot(test, browser.screenshot(tab, tmp_path / f"{test}.png"))


def first_two_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, f"this test pins two workers to two CPUs; this process may use only {cpus}"
    return cpus[0], cpus[1]


PLACED = """
server: {{host: 127.0.0.1, drain_timeout_s: 2}}
models:
  - name: tiny
    path: {{MODELS}}/tiny.pt
    cpu_affinity: [{first}, {second}]
    workers_per_device: 2
  - name: echo
    handler: "{{HANDLERS}}:Echo"
  - name: gated
    handler: "{{HANDLERS}}:Gated"
    handler_args: {{gate: {gate}}}
    max_batch_size: 1
    request_timeout_ms: 600000  # the gate, not a deadline, ends the held batch
"""


def test_each_models_row_state_queue_and_workers_on_their_cpus(
    serve, browser: Browser, tmp_path: Path, example_models: Path
) -> None:
    first, second = first_two_cpus()
    gate = tmp_path / "gate"
    server = serve(PLACED.format(first=first, second=second, gate=gate))
    described = server.models()
    _check_the_status_document(server, described)
    tab = browser.open(server.url + "/")
    browser.wait_for(tab, "document.querySelectorAll('#models tbody tr').length === 3", 60, "the first draw")

    rows = rows_of(browser, tab)
    assert set(rows) == {"tiny", "echo", "gated"}
    for row in rows.values():
        assert (row["state"], row["state_text"], row["queue"], row["version"]) == ("ready", "ready", "0", ""), row
    assert rows["tiny"]["workers"] == "2/2 ready" and rows["echo"]["workers"] == "1/1 ready"
    assert [w["cpus"] for w in described["tiny"]["workers"]] == [[first], [second]]
    cells = browser.evaluate(tab, CPU_CELLS)
    assert set(cells) == {str(cpu) for cpu in range(os.cpu_count() or 1)}  # every CPU of the machine
    for model, description in described.items():
        for worker in description["workers"]:
            for cpu in range(os.cpu_count() or 1):
                drawn = {"model": model, "slot": worker["slot"], "state": "ready", "busy": False}
                assert (drawn in cells[str(cpu)]) == (cpu in worker["cpus"]), (model, worker, cpu, cells)
    assert browser.evaluate(tab, "document.querySelector('#gpus').textContent").strip() == "no GPU visible to inferd"

    with ThreadPoolExecutor(3) as pool:
        try:
            answers = _queue_behind_a_held_batch(server, pool)
            browser.wait_for(tab, f"{cell_text('gated', 'queue')} === '2'", 60, "gated's queue of 2 on the page")
            busy_chips = [w for ws in browser.evaluate(tab, CPU_CELLS).values() for w in ws if w["busy"]]
            assert [w["model"] for w in busy_chips] == ["gated"]
            _send_until_rates_show(server, browser, tab)
            shoot(browser, tab, tmp_path, "placement_queue_and_rates")
        finally:
            gate.touch()  # also after a failed check: the held requests must end for the pool to close
        assert [answer.result() for answer in answers] == [200, 200, 200]
    browser.wait_for(tab, f"{cell_text('gated', 'queue')} === '0'", 60, "gated's queue emptied on the page")
    assert tab.problems == []
    browser.close_tab(tab)
    assert server.stop() == 0, server.log()
    assert_clean_log(server.log())


def _check_the_status_document(server: RunningServer, described: dict[str, dict[str, Any]]) -> None:
    page = server.get("/")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    status = server.get("/status.json").json()
    usable = os.sched_getaffinity(0)
    assert [c["cpu"] for c in status["machine"]["cpus"]] == list(range(os.cpu_count() or 1))
    assert {c["cpu"] for c in status["machine"]["cpus"] if c["usable"]} <= usable
    assert status["machine"]["gpus"] == []
    rows = {row["model"]: row for row in status["models"]}
    assert set(rows) == set(described)
    for name, row in rows.items():
        assert row["version"] is None and row["kind"] == "batched" and row["gpu_memory"] == []
        assert [w["cpus"] for w in row["workers"]] == [w["cpus"] for w in described[name]["workers"]]
        assert {w["device"] for w in row["workers"]} == {"cpu"}


def _post(server: RunningServer, model: str, item: str) -> int:
    # A held request waits for the gate, as long as the checks before it take: no short client timeout.
    answer = httpx.post(f"{server.url}/models/{model}/predict", json={"inputs": [item]}, timeout=300)
    return answer.status_code


def _queue_behind_a_held_batch(server: RunningServer, pool: ThreadPoolExecutor) -> list[Future[int]]:
    """A batch that holds `gated`'s only worker until the gate opens, and two requests queued behind it."""
    answers = [pool.submit(_post, server, "gated", "held")]
    busy = lambda: any(w["busy"] for w in server.models()["gated"]["workers"])  # noqa: E731
    wait_until(busy, 30, "gated's worker to take the held batch")
    return answers + [pool.submit(_post, server, "gated", f"queued {n}") for n in range(2)]


def _send_until_rates_show(server: RunningServer, browser: Browser, tab: Tab) -> None:
    def rates_shown() -> bool:
        assert _post(server, "echo", "x") == 200
        return browser.evaluate(tab, cell_text("echo", "rps")) not in (NO_FIGURE, "0.0", None)

    wait_until(rates_shown, 60, "echo's requests/s on the page")
    browser.wait_for(tab, row_where("echo", "row.querySelector('.p50').textContent.endsWith(' ms')"), 30, "p50")
    assert rows_of(browser, tab)["echo"]["p99"].endswith(" ms")


FLAKY = """
models:
  - name: flaky
    handler: "{{HANDLERS}}:FailsToLoadWhileMarked"
    handler_args: {{marker: {marker}}}
  - name: echo
    handler: "{{HANDLERS}}:Echo"
"""


def test_an_unavailable_model_shows_its_state_and_reason(serve, browser: Browser, tmp_path: Path) -> None:
    marker = tmp_path / "<img src=x onerror=alert(1)>"  # the reason names it: to be shown as text, never as markup
    server = serve(FLAKY.format(marker=marker))
    tab = browser.open(server.url + "/")
    browser.wait_for(tab, row_where("flaky", "row.querySelector('.state').dataset.state === 'ready'"), 60, "ready")
    marker.touch()
    os.kill(server.worker_pids("flaky")[0], signal.SIGKILL)
    unavailable = row_where("flaky", "row.querySelector('.state').dataset.state === 'unavailable'")
    browser.wait_for(tab, unavailable, 90, "flaky shown unavailable")

    rows = rows_of(browser, tab)
    assert rows["flaky"]["state_text"].startswith("unavailable")
    reason = rows["flaky"]["state_text"]
    assert "workers keep failing" in reason and f"refusing to load while {marker} exists" in reason
    assert browser.evaluate(tab, "document.querySelectorAll('#models img').length") == 0
    assert rows["flaky"]["workers"] == "0/1 ready" and rows["echo"]["state"] == "ready"
    shoot(browser, tab, tmp_path, "unavailable_model")
    assert tab.problems == []
    browser.close_tab(tab)
    marker.unlink()
    assert server.stop() == 0, server.log()
    assert_clean_log(server.log())


KEYED = """
server: {{host: 127.0.0.1, auth: {{api_keys_env: STATUS_TEST_KEYS}}}}
models:
  - name: echo
    handler: "{{HANDLERS}}:Echo"
"""


def test_with_api_keys_the_shell_is_open_and_the_data_needs_a_key(serve, browser: Browser, tmp_path: Path) -> None:
    key = "status-page-key-1"
    server = serve(KEYED.format(), env={"STATUS_TEST_KEYS": key}, api_key=key)
    assert httpx.get(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/status.json").status_code == 401
    assert server.get("/status.json").json()["models"][0]["model"] == "echo"

    asking = browser.open(server.url + "/")
    browser.wait_for(asking, "!document.getElementById('key-form').hidden", 60, "the page to ask for the key")
    assert browser.evaluate(asking, "document.querySelectorAll('#models tbody tr').length") == 0
    shoot(browser, asking, tmp_path, "asks_for_the_key")
    typed = f"document.getElementById('key').value = {json.dumps(key)}; document.getElementById('key-form').requestSubmit(); true"
    browser.evaluate(asking, typed)
    browser.wait_for(asking, row_where("echo", "row.querySelector('.state').dataset.state === 'ready'"), 60, "the row")
    assert browser.evaluate(asking, "document.getElementById('key-form').hidden") is True
    browser.close_tab(asking)

    keyed = browser.open(f"{server.url}/#key={key}")
    browser.wait_for(keyed, row_where("echo", "row.querySelector('.state').dataset.state === 'ready'"), 60, "the row")
    assert browser.evaluate(keyed, "location.href") == server.url + "/"  # the key left the address bar
    assert keyed.problems == []
    browser.close_tab(keyed)
    assert server.stop() == 0, server.log()


# ---- GPU memory bars: a recorded status document, as this machine has no GPU -------------------

GIB = 1 << 30
JSON_TYPE = {"Content-Type": "application/json"}


def _recorded_gpu_status() -> dict[str, Any]:
    """What /status.json says of a model with a worker on each of two GPUs, built with the same
    functions the daemon uses from its workers' GPU readings."""
    readings = {("resnet", "cuda:0/0"): GpuMemory("cuda:0", 3 * GIB, 4 * GIB),
                ("resnet", "cuda:1/0"): GpuMemory("cuda:1", 1 * GIB, 2 * GIB)}  # fmt: skip
    workers = [
        worker_view({"slot": slot, "pid": 100 + n, "state": "ready", "busy": False, "cpus": [], "threads": 1})
        for n, slot in enumerate(("cuda:0/0", "cuda:1/0"))
    ]
    row = {"model": "resnet", "version": None, "state": "ready", "reason": None, "kind": "batched",
           "device": "cuda", "route": "/models/resnet/predict", "queue_depth": 0, "workers": workers,
           "requests_per_s": 0.0, "latency_p50_s": None, "latency_p99_s": None,
           "gpu_memory": gpu_memory("resnet", [w["slot"] for w in workers], readings)}  # fmt: skip
    gpus = [{"device": "cuda:0", "used_bytes": 6 * GIB, "total_bytes": 16 * GIB},
            {"device": "cuda:1", "used_bytes": 2 * GIB, "total_bytes": 16 * GIB}]  # fmt: skip
    return {"inferd_version": "test", "rates_window_s": 5.0, "models": [row],
            "machine": {"cpus": [{"cpu": 0, "usable": True}], "gpus": gpus}}  # fmt: skip


@pytest.fixture
def recorded_server() -> Iterator[str]:
    """The real page, with its real headers, beside a fixed status document."""
    page = StatusPage.load()
    document = json.dumps(_recorded_gpu_status()).encode()

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page_type = {"Content-Type": PAGE_TYPE}
            body, headers = (page.html, {**page.headers, **page_type}) if self.path == "/" else (document, JSON_TYPE)
            self.send_response(200 if self.path in ("/", "/status.json") else 404)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_address[1]}"
    http.shutdown()
    thread.join(10)


def test_gpu_memory_is_drawn_as_bars_per_model_and_device(
    browser: Browser, recorded_server: str, tmp_path: Path
) -> None:
    tab = browser.open(recorded_server + "/")
    browser.wait_for(tab, "document.querySelectorAll('#gpus .cell').length === 2", 60, "the GPU cells")
    widths = browser.evaluate(
        tab,
        """Object.fromEntries([...document.querySelectorAll('#gpus .cell')].map(cell => [cell.dataset.gpu,
             [...cell.querySelectorAll('.bar span')].map(part => [part.dataset.model || 'other', part.style.width])]))""",
    )
    assert widths == {
        "cuda:0": [["resnet", "25%"], ["other", "12.5%"]],
        "cuda:1": [["resnet", "12.5%"], ["other", "0%"]],
    }
    cells = browser.evaluate(tab, GPU_CELLS)
    assert [w["slot"] for w in cells["cuda:0"]] == ["cuda:0/0"] and [w["slot"] for w in cells["cuda:1"]] == ["cuda:1/0"]
    row = rows_of(browser, tab)["resnet"]
    assert row["gpu"] == "4.0 GiB on cuda:02.0 GiB on cuda:1"
    shoot(browser, tab, tmp_path, "gpu_memory_bars")
    assert tab.problems == []
    browser.close_tab(tab)
