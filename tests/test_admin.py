"""Admin routes on a real server bound to every address: loopback only without admin keys, from
anywhere with one; never from a web page (a simple request, another Origin, a foreign Host); and
auth and routing reading the same path."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from tests.conftest import HANDLERS, RunningServer, wait_until

OPEN = f"""
server: {{host: 0.0.0.0, port: 1}}
models:
  - {{name: echo, handler: "{HANDLERS}:Echo"}}
"""
KEYED = f"""
server: {{host: 0.0.0.0, port: 1, auth: {{api_keys_env: TEST_API_KEYS, admin_keys_env: TEST_ADMIN_KEYS}}}}
models:
  - {{name: echo, handler: "{HANDLERS}:Echo"}}
"""
KEYS = {"TEST_API_KEYS": "api-key", "TEST_ADMIN_KEYS": "admin-key"}
JSON = {"Content-Type": "application/json"}


def outward_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def reload(base_url: str, headers: dict[str, str] | None = None, content: bytes = b"{}") -> httpx.Response:
    return httpx.post(base_url + "/admin/reload", content=content, headers=headers or {}, timeout=60)


@pytest.fixture
def outward() -> str:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the server from")
    return address


def test_without_admin_keys_admin_answers_only_on_loopback(serve, outward: str) -> None:
    server = serve(OPEN)
    remote = f"http://{outward}:{port_of(server)}"
    assert httpx.get(remote + "/healthz").status_code == 200  # the server does answer on that address
    refused = reload(remote, JSON)
    assert refused.status_code == 403
    assert f"came from {outward}" in refused.json()["error"] and "admin_keys_env" in refused.json()["error"]
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    local = reload(server.url, JSON)
    assert local.status_code == 200, local.text
    assert local.json() == {"added": [], "changed": [], "removed": [], "failed": {}}


def test_admin_refuses_what_a_web_page_could_send(serve) -> None:
    server = serve(OPEN)
    host = f"127.0.0.1:{port_of(server)}"
    form = reload(server.url, {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1")
    assert form.status_code == 403 and "Content-Type: application/json" in form.json()["error"]
    assert reload(server.url, {}, b"").status_code == 403  # no content type at all
    assert reload(server.url, {"X-Inferd-Admin": "1"}, b"").status_code == 200  # a custom header will do
    other_site = reload(server.url, {**JSON, "Origin": "http://evil.example"})
    assert other_site.status_code == 403 and "another origin" in other_site.json()["error"]
    assert reload(server.url, {**JSON, "Origin": "null"}).status_code == 403
    assert reload(server.url, {**JSON, "Origin": f"http://{host}"}).status_code == 200  # its own page
    rebound = reload(server.url, {**JSON, "Host": f"evil.example:{port_of(server)}"})
    assert rebound.status_code == 403 and "Host" in rebound.json()["error"]
    assert reload(server.url, {**JSON, "Host": f"localhost:{port_of(server)}"}).status_code == 200
    preflight = httpx.options(server.url + "/admin/reload", headers={"Origin": "http://evil.example"})
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_admin_hosts_lists_more_names_for_the_host_header(serve) -> None:
    server = serve(OPEN.replace("port: 1}", "port: 1, admin_hosts: [inferd.internal]}"))
    named = reload(server.url, {**JSON, "Host": f"inferd.internal:{port_of(server)}"})
    assert named.status_code == 200, named.text


def test_admin_keys_open_admin_routes_from_anywhere_and_api_keys_do_not(serve, outward: str) -> None:
    server = serve(KEYED, env=KEYS, api_key="api-key")
    remote = f"http://{outward}:{port_of(server)}"
    with_admin_key = reload(remote, {**JSON, "Authorization": "Bearer admin-key"})
    assert with_admin_key.status_code == 200, with_admin_key.text
    assert reload(remote, {**JSON, "X-API-Key": "admin-key"}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer api-key"}):
        refused = reload(server.url, {**JSON, **headers})  # loopback too: the key is the check
        assert refused.status_code == 401 and "admin key" in refused.json()["error"]
        assert refused.headers["www-authenticate"] == "Bearer"
    assert reload(remote, {"Authorization": "Bearer admin-key"}, b"").status_code == 403  # still no simple request
    # an admin key is not an API key
    echo = {"inputs": ["x"]}
    assert httpx.post(remote + "/models/echo/predict", json=echo, headers={"Authorization": "Bearer admin-key"}).status_code == 401
    assert httpx.post(remote + "/models/echo/predict", json=echo, headers={"Authorization": "Bearer api-key"}).status_code == 200


def test_inferd_reload_presents_the_admin_key(serve) -> None:
    server = serve(KEYED, env=KEYS, api_key="api-key")
    command = [sys.executable, "-m", "inferd", "reload", "--url", server.url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env(INFERD_ADMIN_KEY="admin-key"))
    assert done.returncode == 0, done.stderr
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env(INFERD_API_KEY="api-key"))
    assert refused.returncode == 1 and "401" in refused.stderr and "admin key" in refused.stderr


def _env(**extra: str) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")} | extra


def test_a_rejected_reload_is_logged_whatever_asked_for_it(serve) -> None:
    server = serve(OPEN)
    server.config_path.write_text("models: [{name: broken, max_batch_size: -3}]")
    rejected = reload(server.url, {**JSON, "X-Request-ID": "reload-7"})
    assert rejected.status_code == 400
    body = rejected.json()
    assert body["request_id"] == "reload-7" and any("models[0].max_batch_size" in p for p in body["problems"])
    wait_until(lambda: "reload rejected" in server.log(), 10, "the rejection's log line")
    log = server.log()
    assert "reload rejected; the old config keeps serving (POST /admin/reload (request reload-7))" in log
    assert "models[0].max_batch_size" in log
    done = subprocess.run([sys.executable, "-m", "inferd", "reload", "--url", server.url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    wait_until(lambda: server.log().count("reload rejected") == 2, 10, "the second rejection's log line")
    assert server.is_ready()


def test_routing_and_auth_read_the_same_path(serve) -> None:
    """A Host header shaped like a path must not steer an open route's request to a model."""
    server = serve(KEYED, env=KEYS, api_key="api-key")
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        body = b'{"inputs": ["smuggled"]}'
        sock.sendall(
            b"POST /healthz HTTP/1.1\r\nHost: x/models/echo/predict?\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = reply.split(b" ", 2)[1]
    assert status == b"405", reply  # /healthz takes GET: the request never reached the model
    assert b"smuggled" not in reply
    metrics = server.get("/metrics").text
    assert 'inferd_requests_total{code="200",model="echo",protocol="http"}' not in metrics
    assert server.post("/models/echo/predict", {"inputs": ["fair"]}).status_code == 200  # the counter exists
    assert 'inferd_requests_total{code="200",model="echo",protocol="http"} 1.0' in server.get("/metrics").text
