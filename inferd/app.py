"""The starlette app over a Daemon, and the uvicorn server that runs it.

The server listens at once: /healthz answers while models load, /readyz turns 200 when every model
has a ready worker. SIGTERM and SIGINT drain (uvicorn stops accepting, open requests finish within
`drain_timeout_s`, then workers stop); SIGHUP calls the reload hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferd.daemon import Daemon, ServedModel
from inferd.errors import EXIT_STARTUP, StartupError
from inferd.protocols import native
from inferd.protocols.http import answer, json_response, parse_json, read_body

log = logging.getLogger(__name__)


def build_app(daemon: Daemon, on_startup_failure: Callable[[StartupError], None], metrics_route: bool = True) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        boot = asyncio.get_running_loop().create_task(_boot(daemon, on_startup_failure))
        yield
        boot.cancel()
        await daemon.stop()

    routes = [Route(m.config.url_path, _predict_endpoint(daemon, m), methods=["POST"]) for m in daemon.models.values()]
    routes += [
        Route("/models", lambda request: json_response({"models": [m.describe() for m in daemon.models.values()]})),
        Route("/models/{name}/predict", _unknown_model(daemon), methods=["POST"]),
        Route("/healthz", lambda request: json_response({"status": "alive"})),
        Route("/readyz", lambda request: _readiness(daemon)),
    ]
    if metrics_route:
        routes.append(Route("/metrics", metrics_endpoint(daemon)))
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})


async def _boot(daemon: Daemon, on_failure: Callable[[StartupError], None]) -> None:
    try:
        await daemon.start()
    except StartupError as error:
        on_failure(error)


def _predict_endpoint(daemon: Daemon, model: ServedModel) -> Callable[[Request], Any]:
    server = daemon.config.server

    async def predict(request: Request) -> Response:
        async def produce() -> Response:
            body = await read_body(request, server.max_request_bytes, server.body_timeout_s)
            decoded = native.decode(parse_json(body), model.inputs, model.is_handler)
            result = await model.batcher.infer(decoded.payload, decoded.items, decoded.key)
            return json_response(native.encode(result, model.outputs, decoded))

        return await answer(model.metrics.request_done, produce)

    return predict


def _unknown_model(daemon: Daemon) -> Callable[[Request], Any]:
    async def unknown(request: Request) -> Response:
        names = sorted(daemon.models)
        return json_response({"error": f"no model named {request.path_params['name']!r}; models: {names}"}, 404)

    return unknown


def _readiness(daemon: Daemon) -> Response:
    states = {name: m.workers.state for name, m in daemon.models.items()}
    return json_response({"ready": daemon.ready, "models": states}, 200 if daemon.ready else 503)


def metrics_endpoint(daemon: Daemon) -> Callable[[Request], Any]:
    async def metrics(request: Request) -> Response:
        return Response(daemon.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return metrics


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return json_response({"error": f"{error.detail}: {request.method} {request.url.path}"}, error.status_code)


class Server(uvicorn.Server):
    """uvicorn's server with inferd's signals: drain on SIGTERM/SIGINT, reload on SIGHUP, and no
    re-raising of the signal after the drain, so a drained daemon exits 0."""

    def __init__(self, config: uvicorn.Config, on_reload: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_reload = on_reload
        self.exit_code = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._drain, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._drain, signal.SIGINT)
        if self._on_reload is not None:
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

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


def metrics_app(daemon: Daemon) -> Starlette:
    return Starlette(routes=[Route("/metrics", metrics_endpoint(daemon))])
