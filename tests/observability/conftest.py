"""Fixtures for the observability tests: a real Prometheus, and exporters for it to scrape."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from .prometheus import PrometheusServer, prometheus_binary
from .promtool import promtool_binary

StartPrometheus = Callable[..., PrometheusServer]
ServeRegistry = Callable[[CollectorRegistry], str]


def skip_without(tool: str) -> NoReturn:
    """Skip a test that needs a tool from Debian's prometheus package where it is missing; under CI
    (CI set in the environment) fail instead, so that a missing install step cannot pass as green."""
    message = f"{tool} is not installed (apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def prometheus_servers() -> Iterator[list[PrometheusServer]]:
    """The Prometheus servers a test started; each is stopped when the test ends. Skips the test
    where Debian's prometheus package is not installed."""
    if prometheus_binary() is None:
        skip_without("prometheus")
    servers: list[PrometheusServer] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def start_prometheus(prometheus_servers: list[PrometheusServer]) -> StartPrometheus:
    """`start_prometheus("127.0.0.1:PORT")` returns a running Prometheus that scrapes that target
    every second and has scraped it once (options as for `PrometheusServer.start`)."""

    def start(target: str, **options: Any) -> PrometheusServer:
        server = PrometheusServer.start(target, **options)
        prometheus_servers.append(server)
        return server

    return start


@pytest.fixture
def start_prometheus_with_config(prometheus_servers: list[PrometheusServer]) -> StartPrometheus:
    """`start_prometheus_with_config(config_text, files={...})`: Prometheus with a config of the
    test's own (options as for `PrometheusServer.start_with_config`)."""

    def start(config: str, **options: Any) -> PrometheusServer:
        server = PrometheusServer.start_with_config(config, **options)
        prometheus_servers.append(server)
        return server

    return start


@pytest.fixture
def promtool() -> str:
    """The promtool path; skips the test where Debian's prometheus package is not installed."""
    binary = promtool_binary()
    if binary is None:
        skip_without("promtool")
    return binary


@pytest.fixture
def serve_registry() -> Iterator[ServeRegistry]:
    """Serve a prometheus_client registry over HTTP on a free loopback port; returns "host:port"."""
    servers = []

    def serve(registry: CollectorRegistry) -> str:
        server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append(server)
        return f"127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
