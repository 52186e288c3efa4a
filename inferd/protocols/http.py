"""What every route shares: one call's context, bounded body reading, and the one place where an
error becomes an HTTP answer (with the request's id, and one log line)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from inferd.errors import BadRequest, BodyTooSlow, ClientGone, PayloadTooLarge, RequestError

if TYPE_CHECKING:
    from inferd.daemon import ServedModel

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
QUIET_STATUSES = frozenset({429})  # a flood under overload: inferd_requests_total counts them instead


@dataclass(slots=True)
class Call:
    """One HTTP request as a route sees it: the request, its id, and what its path named."""

    request: Request
    request_id: str
    model: ServedModel | None = None  # the model a model route's path names, if it exists
    params: Mapping[str, str] = field(default_factory=dict)  # e.g. a v2 path's name and version

    @property
    def path(self) -> str:
        return str(self.request.scope["path"])

    @property
    def method(self) -> str:
        return str(self.request.scope["method"])


Endpoint = Callable[[Call], Awaitable[Response]]


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)


def error_response(error: RequestError, request_id: str) -> Response:
    return json_response(
        {"error": error.message, **error.fields, "request_id": request_id}, error.status, error.headers
    )


async def answer(call: Call, endpoint: Endpoint) -> Response:
    """The endpoint's response, or the JSON error it raised; nothing else turns errors into answers."""
    try:
        return await endpoint(call)
    except RequestError as error:
        return _error_answer(call, error)
    except ClientDisconnect:  # starlette's, from a body read
        return _error_answer(call, ClientGone("the client disconnected while sending its body"))
    except Exception:  # a bug of ours: answer 500 with a reason and keep serving
        log.exception("request %s: internal error on %s %s", call.request_id, call.method, call.path)
        return json_response({"error": "internal server error; see the server log", "request_id": call.request_id}, 500)


def _error_answer(call: Call, error: RequestError) -> Response:
    _log_error(call, error)
    return error_response(error, call.request_id)


def _log_error(call: Call, error: RequestError) -> None:
    level = logging.DEBUG if error.status in QUIET_STATUSES else logging.INFO if error.status < 500 else logging.ERROR
    if error.detail:  # a model raised: its traceback is for the operator, never for the caller
        log.log(max(level, logging.WARNING), "request %s: %d %s %s: %s; traceback: %s",
                call.request_id, error.status, call.method, call.path, error.message, error.detail.rstrip())  # fmt: skip
    else:
        log.log(level, "request %s: %d %s %s: %s", call.request_id, error.status, call.method, call.path, error.message)


async def read_body(request: Request, limit_bytes: int, timeout_s: float) -> bytes:
    """The whole body, or 413 past `limit_bytes`, or 408 for a client too slow to send it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > limit_bytes:
            raise _too_large(int(declared), limit_bytes)
    try:
        if sys.version_info >= (3, 11):  # a deadline on this task, without wait_for's extra task
            async with asyncio.timeout(timeout_s):
                return await _read_limited(request, limit_bytes)
        return await asyncio.wait_for(_read_limited(request, limit_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise BodyTooSlow(f"the request body did not arrive within {timeout_s:g} s") from None


async def _read_limited(request: Request, limit_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise _too_large(size, limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the body has {size} bytes or more; this server takes at most {limit_bytes} (max_request_bytes)"
    )


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
