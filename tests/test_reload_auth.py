"""Reloading the config under a running server, and API keys."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from tests.conftest import HANDLERS, wait_until

TWO_MODELS = f"""
models:
  - {{name: kept, handler: "{HANDLERS}:Echo"}}
  - {{name: changed, handler: "{HANDLERS}:Echo", handler_args: {{tag: v1}}}}
  - {{name: removed, handler: "{HANDLERS}:Echo"}}
"""
RELOADED = f"""
models:
  - {{name: kept, handler: "{HANDLERS}:Echo"}}
  - {{name: changed, handler: "{HANDLERS}:Echo", handler_args: {{tag: v2}}}}
  - {{name: added, handler: "{HANDLERS}:Echo", route: /added}}
"""


def tag_of(server, model: str) -> str:
    return server.post(f"/models/{model}/predict", {"inputs": ["x"]}).json()["outputs"][0]["tag"]


def test_sighup_applies_the_difference_and_a_bad_config_is_rejected(serve) -> None:
    server = serve(TWO_MODELS)
    kept_pids = server.worker_pids("kept")
    assert tag_of(server, "changed") == "v1"

    server.config_path.write_text(server.config_path.read_text().replace(TWO_MODELS.strip(), RELOADED.strip()))
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload done" in server.log(), 90, "the reload")
    assert sorted(server.models()) == ["added", "changed", "kept"]
    assert tag_of(server, "changed") == "v2"
    assert server.post("/added", {"inputs": ["new"]}).json()["outputs"][0]["item"] == "new"
    assert server.post("/models/removed/predict", {"inputs": ["x"]}).status_code == 404
    assert server.worker_pids("kept") == kept_pids  # untouched

    server.config_path.write_text("models: [{name: broken, max_batch_size: -3}]")
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload rejected" in server.log(), 30, "the rejection")
    assert "models[0].max_batch_size" in server.log()
    assert tag_of(server, "changed") == "v2" and server.is_ready()


def test_inferd_reload_command_reports_what_changed(serve) -> None:
    server = serve(TWO_MODELS)
    server.config_path.write_text(server.config_path.read_text().replace(TWO_MODELS.strip(), RELOADED.strip()))
    done = subprocess.run(
        [sys.executable, "-m", "inferd", "reload", "--url", server.url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert '"added"' in done.stdout and '"removed"' in done.stdout
    server.config_path.write_text("models: [}")
    rejected = subprocess.run(
        [sys.executable, "-m", "inferd", "reload", "--url", server.url], capture_output=True, text=True, timeout=60
    )
    assert rejected.returncode == 2 and "not valid YAML" in rejected.stderr


AUTH = f"""
server: {{host: 127.0.0.1, port: 1, auth: {{api_keys_env: TEST_INFERD_KEYS, protect_metrics: %s}}}}
models:
  - {{name: echo, handler: "{HANDLERS}:Echo"}}
"""


def test_api_keys_guard_inference_and_admin_routes_but_not_health(serve) -> None:
    server = serve(AUTH % "false", env={"TEST_INFERD_KEYS": "first-key, second-key"}, api_key="first-key")
    body = {"inputs": ["x"]}
    url = server.url + "/models/echo/predict"
    refused = httpx.post(url, json=body)
    assert refused.status_code == 401 and "API key" in refused.json()["error"]
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer second-key"}).status_code == 200
    assert httpx.post(url, json=body, headers={"X-API-Key": "first-key"}).status_code == 200
    assert httpx.post(server.url + "/admin/reload").status_code == 401
    assert httpx.get(server.url + "/models").status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_metrics_can_be_protected_and_missing_keys_stop_startup(serve) -> None:
    server = serve(AUTH % "true", env={"TEST_INFERD_KEYS": "k"}, api_key="k")
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    missing = serve(AUTH % "false", wait=False, env={"TEST_INFERD_KEYS": ""})
    assert missing.process.wait(30) == 2
    assert "server.auth.api_keys_env: environment variable TEST_INFERD_KEYS is not set or empty" in missing.log()
