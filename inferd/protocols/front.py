"""The ASGI application in front of every route: one pure-ASGI layer, no middleware stack.

Per HTTP request, in order: take the client's X-Request-ID if it is sane (else make one); match the
path (404) and the method (405 with Allow); check access (401/403); run the endpoint; turn any
error into its JSON answer (`http.answer`, the only place that does); count inference requests in
their model's metrics; send, with X-Request-ID on every response. An answer to a client that has
gone (499) is counted and logged but not sent. Lifespan events go to `lifespan`
(a starlette Router's), websockets are refused.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router as StarletteRouter

from inferd.auth import Access
from inferd.errors import ClientGone
from inferd.protocols.http import Call, answer
from inferd.protocols.routing import Match, Router
from inferd.request_note import NOTE, VARIANT_HEADER, RequestNote

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"
# Sane: short, and safe to echo in a header and to write in a log line.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}")


class Front:
    def __init__(self, router: Router, access: Access, lifespan: ASGIApp | None = None) -> None:
        self.router = router
        self.access = access
        self.other = lifespan or StarletteRouter()  # lifespan, and a refusal for websockets

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.other(scope, receive, send)
        request_id = request_id_of(scope["headers"])
        started = time.perf_counter()
        match = self.router.match(scope["path"])
        call = Call(Request(scope, receive), request_id)
        if match is not None:
            call.model, call.params = match.model, match.params
        note = RequestNote(scope["headers"])
        token = NOTE.set(note)
        try:
            response = await answer(call, lambda call: self._serve(call, match))
        finally:
            NOTE.reset(token)
        if note.variant is not None:  # a traffic split answered: name its variant
            response.raw_headers.append((VARIANT_HEADER.encode(), note.variant.encode()))
        if match is not None and match.route.inference and match.model is not None:
            match.model.metrics.request_done(response.status_code, time.perf_counter() - started)
        if response.status_code == ClientGone.status:
            return  # nobody to send it to
        response.raw_headers.append((REQUEST_ID_HEADER, request_id.encode()))
        await response(scope, receive, send)

    async def _serve(self, call: Call, match: Match | None) -> Response:
        if match is None:
            raise self.router.not_found(call.path)
        endpoint = match.route.endpoint(call.method, call.path)
        self.access.check(match.route, call.request.scope)
        return await endpoint(call)


def request_id_of(headers: Any) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _SANE_REQUEST_ID.fullmatch(value):
            return str(value.decode("ascii"))
    return uuid.uuid4().hex
