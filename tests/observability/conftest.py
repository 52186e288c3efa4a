"""Fixtures for the observability tests: a real Prometheus, and exporters for it to scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from .prometheus import PrometheusServer, prometheus_binary
from .promtool import promtool_binary

StartPrometheus = Callable[..., PrometheusServer]
ServeRegistry = Callable[[CollectorRegistry], str]


@pytest.fixture
def start_prometheus() -> Iterator[StartPrometheus]:
    """Start Prometheus instances: `start_prometheus("127.0.0.1:PORT")` returns a running server
    that has scraped the target once. Every instance is stopped when the test ends. Skips the test
    where Debian's prometheus package is not installed."""
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    servers: list[PrometheusServer] = []

    def start(target: str, **options: Any) -> PrometheusServer:
        server = PrometheusServer.start(target, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def promtool() -> str:
    """The promtool path; skips the test where Debian's prometheus package is not installed."""
    binary = promtool_binary()
    if binary is None:
        pytest.skip("promtool is not installed (apt-get install -y prometheus)")
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
