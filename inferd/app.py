"""The HTTP app over a Daemon (its routes, on inferd.protocols.front.Front), and the uvicorn
servers that run it.

The server listens at once: /healthz answers while models load, /readyz turns 200 when every model
has a ready worker. Model routes are looked up per request, so a reload can add, swap and remove
models under a running server. SIGTERM and SIGINT drain (uvicorn stops accepting, open requests
finish within `drain_timeout_s`, then workers stop); SIGHUP reloads the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import uvicorn
from starlette.responses import Response
from starlette.routing import Router as StarletteRouter

from inferd.auth import Access
from inferd.daemon import Daemon
from inferd.errors import EXIT_STARTUP, BadRequest, ConfigError, NotFound, StartupError
from inferd.protocols import generate, native_routes, openai, openapi, status_routes, v2
from inferd.protocols.front import Front
from inferd.protocols.http import Call, json_response
from inferd.protocols.routing import Route, Router

log = logging.getLogger(__name__)

Reloader = Callable[[], Awaitable[dict[str, Any]]]
T = TypeVar("T")


def build_app(
    daemon: Daemon,
    on_startup_failure: Callable[[StartupError], None],
    reload: Reloader,
    metrics_route: bool = True,
) -> Front:
    """The daemon's HTTP app; raises ConfigError if the configured keys cannot be read or a
    configured middleware cannot be built."""

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        boot = asyncio.get_running_loop().create_task(_boot(daemon, on_startup_failure))
        yield
        boot.cancel()
        await daemon.stop()

    routes = _service_routes(daemon, reload, metrics_route) + v2.routes(daemon) + openai.routes(daemon)
    routes += status_routes.routes(daemon)
    resolvers = [native_routes.resolver(daemon), v2.resolver(daemon), generate.resolver(daemon)]
    router = Router(routes, resolvers, native_routes.not_found(daemon))
    access = Access.from_config(daemon.config.server, daemon.config.source)
    daemon.rate_limits.check_key_names(access.api_key_names, daemon.config.source)
    return Front(
        router, access, lifespan=StarletteRouter(lifespan=lifespan), limits=daemon.rate_limits, config=daemon.config
    )


def _service_routes(daemon: Daemon, reload: Reloader, metrics_route: bool) -> list[Route]:
    async def models(call: Call) -> Response:
        return json_response({"models": [m.describe() for m in daemon.models.values()]})

    async def alive(call: Call) -> Response:
        return json_response({"status": "alive"})

    async def readiness(call: Call) -> Response:
        states = {name: m.workers.state for name, m in daemon.models.items()}
        return json_response({"ready": daemon.ready, "models": states}, 200 if daemon.ready else 503)

    async def document(call: Call) -> Response:
        return json_response(openapi.document(daemon, metrics_route))

    routes = [
        Route("/models", {"GET": models}),
        Route("/healthz", {"GET": alive}),
        Route("/readyz", {"GET": readiness}),
        Route("/openapi.json", {"GET": document}),
        Route("/admin/reload", {"POST": _reload_endpoint(reload)}),
    ]
    return routes + [_metrics_route(daemon)] if metrics_route else routes


async def _boot(daemon: Daemon, on_failure: Callable[[StartupError], None]) -> None:
    try:
        await daemon.start()
    except StartupError as error:
        on_failure(error)


async def reload_logged(reload: Callable[[], Awaitable[T]], trigger: str) -> T:
    """Reload, logging its start and a rejection the same way whatever asked for it."""
    log.info("%s: reloading the config", trigger)
    try:
        return await reload()
    except ConfigError as error:
        log.error("reload rejected; the old config keeps serving (%s):\n%s", trigger, error)
        raise


def _reload_endpoint(reload: Reloader) -> Callable[[Call], Awaitable[Response]]:
    async def reload_now(call: Call) -> Response:
        try:
            return json_response(await reload_logged(reload, f"{call.method} {call.path} (request {call.request_id})"))
        except ConfigError as error:
            message = "the new config was rejected; the old one keeps serving"
            raise BadRequest(message, fields={"problems": error.problems}) from None

    return reload_now


def _metrics_route(daemon: Daemon) -> Route:
    async def metrics(call: Call) -> Response:
        return Response(daemon.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Route("/metrics", {"GET": metrics})


class Server(uvicorn.Server):
    """uvicorn's server with inferd's signals: drain on SIGTERM/SIGINT, reload on SIGHUP, and no
    re-raising of the signal after the drain, so a drained daemon exits 0."""

    def __init__(self, config: uvicorn.Config, on_reload: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_reload = on_reload
        self.exit_code = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._drain, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._drain, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _hangup(self) -> None:
        if self.on_reload is not None:
            self.on_reload()

    def _drain(self, sig: signal.Signals) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl+C: stop waiting
        log.info("%s: draining (at most %.0f s)", sig.name, self.config.timeout_graceful_shutdown or 0)
        self.should_exit = True

    def fail_startup(self, error: StartupError) -> None:
        log.error("%s", error)
        self.exit_code = EXIT_STARTUP
        self.should_exit = True


class SecondaryServer(uvicorn.Server):
    """A server beside the main one (the metrics port): the main server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_app(daemon: Daemon) -> Front:
    """The separate metrics port's app: /metrics only, open, with the same HTTP rules."""
    router = Router([_metrics_route(daemon)], [], lambda path: NotFound(f"no route {path}; this port serves /metrics"))
    return Front(router, Access.open_to_all(daemon.config.server))
