"""The ASGI application in front of every route: one pure-ASGI layer; the only middleware is what
the config names (inferd/protocols/middleware.py): the server's around all of this, a model's
around what follows the match of a path that names the model, or around the request replayed once
a route read a body that names it (the OpenAI routes).

Per HTTP request, in order: take the client's X-Request-ID if it is sane (else make one); match the
path (404) and the method (405 with Allow); check access (401/403); on an inference route, take
from the rate limits' buckets (429, inferd/rate_limit.py), all before the body is read; run the
endpoint; turn any error into its JSON answer (`http.answer`, the only place that does); count
inference requests in their model's metrics (those a model's middleware answered itself too);
send, with X-Request-ID on every response. An answer to a client that has gone (499) is counted
and logged but not sent. Lifespan events go to `lifespan` (a starlette Router's), websockets are
refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router as StarletteRouter

from inferd.auth import Access
from inferd.config import Config
from inferd.errors import ClientGone, ModelUnavailable
from inferd.protocols import openai_errors
from inferd.protocols.http import Call, answer
from inferd.protocols.middleware import (
    ModelMiddleware,
    ThroughModelMiddleware,
    build_all,
    passed_model_middleware,
    reached_inferd,
)
from inferd.protocols.routing import Match, Router
from inferd.rate_limit import RateLimits
from inferd.request_note import NOTE, VARIANT_HEADER, RequestNote

if TYPE_CHECKING:
    from inferd.daemon import ServedModel

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"
# Sane: short, and safe to echo in a header and to write in a log line.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}")


class Front:
    def __init__(
        self,
        router: Router,
        access: Access,
        lifespan: ASGIApp | None = None,
        limits: RateLimits | None = None,
        config: Config | None = None,
    ) -> None:
        self.router = router
        self.access = access
        self.limits = limits
        self.other = lifespan or StarletteRouter()  # lifespan, and a refusal for websockets
        self.model_middleware = ModelMiddleware(self._rematched)
        self._http: ASGIApp = self._route
        if config is not None:  # raises ConfigError where a middleware cannot be built
            self._http = build_all(self._route, config, self.model_middleware)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.other(scope, receive, send)
        await self._http(scope, receive, send)

    async def _route(self, scope: Scope, receive: Any, send: Any) -> None:
        match = self.router.match(scope["path"])
        if match is not None and match.model is not None and match.model.config.middleware:
            started = time.perf_counter()
            answered = await self.model_middleware.run(match.model.config, scope, receive, send)
            return _count_answered_by_middleware(match.model if match.route.inference else None, answered, started)
        await self._respond(scope, receive, send, match)

    async def _rematched(self, scope: Scope, receive: Any, send: Any) -> None:
        """Inside a model's middleware, which may have changed the path."""
        reached_inferd()
        await self._respond(scope, receive, send, self.router.match(scope["path"]))

    async def _respond(self, scope: Scope, receive: Any, send: Any, match: Match | None) -> None:
        request_id = request_id_of(scope["headers"])
        started = time.perf_counter()
        call = Call(Request(scope, receive), request_id)
        if match is not None:
            call.model, call.params, call.error_body = match.model, match.params, match.route.error_body
        elif scope["path"].startswith(openai_errors.PREFIX):  # an OpenAI client's 404 reads as OpenAI's
            call.error_body = openai_errors.openai_error_body
        note = RequestNote(scope["headers"])
        token = NOTE.set(note)
        try:
            response = await answer(call, lambda call: self._serve(call, match))
        except asyncio.CancelledError:
            response = await answer(call, _cancelled_by_shutdown)
        finally:
            NOTE.reset(token)
        if isinstance(response, ThroughModelMiddleware):  # its body named a model with middleware
            answered = await self.model_middleware.replay(response, scope, receive, send)
            return _count_answered_by_middleware(call.model, answered, started)
        if note.variant is not None:  # a traffic split answered: name its variant
            response.raw_headers.append((VARIANT_HEADER.encode(), note.variant.encode()))
        if match is not None and match.route.inference and call.model is not None:  # OpenAI's: set by the route
            call.model.metrics.request_done("http", response.status_code, time.perf_counter() - started)
        if response.status_code == ClientGone.status:
            return  # nobody to send it to
        response.raw_headers.append((REQUEST_ID_HEADER, request_id.encode()))
        await response(scope, receive, send)

    async def _serve(self, call: Call, match: Match | None) -> Response:
        if match is None:
            raise self.router.not_found(call.path)
        endpoint = match.route.endpoint(call.method, call.path)
        call.key_name = self.access.check(match.route, call.request.scope)
        if match.route.inference and self.limits is not None and not passed_model_middleware():  # else taken
            self.limits.admit(call.key_name, match.model.config if match.model is not None else None)
        return await endpoint(call)


def _count_answered_by_middleware(model: ServedModel | None, status: int | None, started: float) -> None:
    """A request that a model's middleware answered itself (a 401, say) counts under the model."""
    if model is not None and status is not None:
        model.metrics.request_done("http", status, time.perf_counter() - started)


async def _cancelled_by_shutdown(call: Call) -> Response:
    """uvicorn cancels what still runs once the drain timeout has passed: a 503 for each, and one
    log line, instead of a traceback per request from uvicorn."""
    task = asyncio.current_task()
    if task is not None and sys.version_info >= (3, 11):
        task.uncancel()
    log.warning("%s %s (request %s): cancelled, still running when the drain timeout passed",
                call.method, call.path, call.request_id)  # fmt: skip
    raise ModelUnavailable("the server stopped before this request was answered (server.drain_timeout_s); retry")


def request_id_of(headers: Any) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _SANE_REQUEST_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return uuid.uuid4().hex
