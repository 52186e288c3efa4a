"""The starlette app over a Daemon, and the uvicorn servers that run it.

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
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from inferd.daemon import Daemon, ServedModel
from inferd.errors import EXIT_STARTUP, ConfigError, StartupError
from inferd.protocols import native, openapi, v2
from inferd.protocols.http import answer, json_response

log = logging.getLogger(__name__)

Reloader = Callable[[], Awaitable[dict[str, Any]]]


def build_app(
    daemon: Daemon,
    on_startup_failure: Callable[[StartupError], None],
    reload: Reloader,
    metrics_route: bool = True,
) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        boot = asyncio.get_running_loop().create_task(_boot(daemon, on_startup_failure))
        yield
        boot.cancel()
        await daemon.stop()

    routes: list[BaseRoute] = [
        Route("/models", lambda request: json_response({"models": [m.describe() for m in daemon.models.values()]})),
        Route("/healthz", lambda request: json_response({"status": "alive"})),
        Route("/readyz", lambda request: _readiness(daemon)),
        Route("/admin/reload", _reload_endpoint(reload), methods=["POST"]),
        Route("/openapi.json", lambda request: json_response(openapi.document(daemon, metrics_route))),
        *v2.routes(daemon),
    ]
    if metrics_route:
        routes.append(Route("/metrics", metrics_endpoint(daemon)))
    routes.append(Route("/{path:path}", _model_route(daemon), methods=["GET", "POST", "PUT", "DELETE", "PATCH"]))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    return InferenceFastPath(app, daemon, v2.infer_endpoint(daemon))  # type: ignore[return-value]


class InferenceFastPath:
    """Pure ASGI front for the two hot routes (native predict, v2 infer): they skip starlette's
    middleware stack and its route scan, which took about a third of the main process's time per
    request under load. Every other request, and lifespan, goes to the starlette app."""

    def __init__(self, app: Starlette, daemon: Daemon, v2_infer: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = app
        self.daemon = daemon
        self.v2_infer = v2_infer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            model = self.daemon.route(path)
            if model is not None:
                response = await predict(self.daemon, model, Request(scope, receive))
                return await response(scope, receive, send)
            params = v2.infer_path_params(path)
            if params is not None:
                scope["path_params"] = params
                response = await self.v2_infer(Request(scope, receive))
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


async def _boot(daemon: Daemon, on_failure: Callable[[StartupError], None]) -> None:
    try:
        await daemon.start()
    except StartupError as error:
        on_failure(error)


def _model_route(daemon: Daemon) -> Callable[[Request], Awaitable[Response]]:
    """Every path not served above: a model's predict route, or a JSON 404/405."""

    async def dispatch(request: Request) -> Response:
        model = daemon.route(request.url.path)
        if model is None:
            return _not_found(daemon, request)
        if request.method != "POST":
            return json_response({"error": f"{request.url.path} takes POST"}, 405, {"Allow": "POST"})
        return await predict(daemon, model, request)

    return dispatch


def _not_found(daemon: Daemon, request: Request) -> Response:
    parts = request.url.path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "models" and parts[2] == "predict":
        return json_response({"error": f"no model named {parts[1]!r}; models: {sorted(daemon.models)}"}, 404)
    return json_response({"error": f"no route {request.url.path}"}, 404)


async def predict(daemon: Daemon, model: ServedModel, request: Request) -> Response:
    async def produce() -> Response:
        with daemon.admission.hold(model.name, model.config.request_bytes_fraction) as held:
            decoded = await native.read_request(request, daemon, model, held)
            result = await model.batcher.infer(decoded.payload, decoded.items, decoded.key)
            return json_response(native.encode(result, model.outputs, decoded))

    return await answer(model.metrics.request_done, produce)


def _readiness(daemon: Daemon) -> Response:
    states = {name: m.workers.state for name, m in daemon.models.items()}
    return json_response({"ready": daemon.ready, "models": states}, 200 if daemon.ready else 503)


def _reload_endpoint(reload: Reloader) -> Callable[[Request], Awaitable[Response]]:
    async def reload_now(request: Request) -> Response:
        try:
            return json_response(await reload())
        except ConfigError as error:
            return json_response(
                {"error": "the new config was rejected; the old one keeps serving", "problems": error.problems}, 400
            )

    return reload_now


def metrics_endpoint(daemon: Daemon) -> Callable[[Request], Awaitable[Response]]:
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


def metrics_app(daemon: Daemon) -> Starlette:
    return Starlette(routes=[Route("/metrics", metrics_endpoint(daemon))])
