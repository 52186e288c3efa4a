"""Optional API keys: every route but health and metrics (unless those are protected too) needs one.

Keys come from an environment variable or a file, never from the YAML itself. A key is presented
as `Authorization: Bearer <key>` or `X-API-Key: <key>` and compared in constant time with every
configured key, so neither a match nor its position can be timed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from inferd.config import AuthConfig
from inferd.errors import ConfigError

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
ALWAYS_OPEN = frozenset({"/openapi.json"})

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def load_api_keys(auth: AuthConfig, source: str) -> tuple[bytes, ...]:
    keys: list[str] = []
    if auth.api_keys_env:
        value = os.environ.get(auth.api_keys_env, "")
        if not value.strip():
            raise ConfigError(
                source, [f"server.auth.api_keys_env: environment variable {auth.api_keys_env} is not set or empty"]
            )
        keys += value.replace(",", " ").split()
    if auth.api_keys_file:
        try:
            lines = auth.api_keys_file.read_text().splitlines()
        except OSError as error:
            raise ConfigError(
                source, [f"server.auth.api_keys_file: cannot read {auth.api_keys_file}: {error.strerror}"]
            ) from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(source, ["server.auth: no API keys found in the given variable or file"])
    return tuple(key.encode() for key in keys)


class ApiKeyAuth:
    """Pure ASGI middleware: no per-request objects beyond the header lookup."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...], auth: AuthConfig) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = set(ALWAYS_OPEN)
        if not auth.protect_health:
            self.open_paths |= HEALTH_PATHS
        if not auth.protect_metrics:
            self.open_paths.add("/metrics")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = orjson.dumps({"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"})
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif name == b"x-api-key":
                presented = value.strip()
        matched = False
        for key in self.keys:  # no early exit: every key is compared
            matched |= hmac.compare_digest(presented, key)
        return matched
