"""What every route shares: bounded body reading, JSON errors, and per-request accounting."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from inferd.errors import BadRequest, BodyTooSlow, PayloadTooLarge, RequestError

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)


def error_response(error: RequestError) -> Response:
    return json_response({"error": error.message}, error.status, error.headers)


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


RecordRequest = Callable[[int, float], None]


async def answer(record: RecordRequest, produce: Callable[[], Awaitable[Response]]) -> Response:
    """Run one request's work, turning RequestErrors into JSON errors and recording its outcome."""
    started = time.perf_counter()
    try:
        response = await produce()
    except RequestError as error:
        response = error_response(error)
    except Exception:  # a bug of ours: answer 500 with a reason and keep serving
        log.exception("internal error while answering a request")
        response = json_response({"error": "internal server error; see the server log"}, 500)
    record(response.status_code, time.perf_counter() - started)
    return response
