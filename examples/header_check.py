"""An ASGI middleware for inferd's config: requests without a header (or with another value than
the one given) are answered 401 here, before inferd reads them.

    server:
      middleware:
        - {class: ../examples/header_check.py:RequireHeader, args: {header: x-team}}
    models:
      - name: classify
        pipeline: [decode, effnet, top5]
        middleware:
          - class: ../examples/header_check.py:RequireHeader
            args: {header: x-tenant, value: vision}

Pure ASGI, built once as `RequireHeader(app, **args)`: Starlette's middleware convention.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class RequireHeader:
    def __init__(self, app: ASGIApp, header: str, value: str | None = None) -> None:
        if not header.strip():
            raise ValueError("header must name an HTTP header, e.g. x-team")
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.value = value.encode("latin-1") if value is not None else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            return await self.app(scope, receive, send)
        wanted = self.header.decode() if self.value is None else f"{self.header.decode()}: {self.value.decode()}"
        await JSONResponse({"error": f"this route needs the header {wanted}"}, 401)(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = [value for name, value in scope["headers"] if name == self.header]
        if self.value is None:
            return bool(given)
        return any(hmac.compare_digest(value, self.value) for value in given)
