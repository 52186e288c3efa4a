"""What every route shares: one call's context, bounded body reading and decoding within the
memory budget, and the one place where an error becomes an HTTP answer (with the request's id, and
one log line)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from inferd.admission import Admission, Reservation, TensorLimits, body_bound_bytes
from inferd.config import ServerConfig
from inferd.decoder import DECODE_IN_PROCESS_BYTES
from inferd.errors import BadRequest, BodyTooSlow, ClientGone, PayloadTooLarge, RequestError

if TYPE_CHECKING:
    from inferd.daemon import ServedModel

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
ErrorBody = Callable[[RequestError, str], dict[str, Any]]  # (error, request id) -> the JSON answer
QUIET_STATUSES = frozenset({429})  # a flood under overload: inferd_requests_total counts them instead


@dataclass(slots=True)
class Call:
    """One HTTP request as a route sees it: the request, its id, and what its path named."""

    request: Request
    request_id: str
    model: ServedModel | None = None  # the model a model route's path names, if it exists
    params: Mapping[str, str] = field(default_factory=dict)  # e.g. a v2 path's name and version
    key_name: str | None = None  # the name of the API key that opened the route, if any
    error_body: ErrorBody | None = None  # how the route's errors read, where not inferd's own

    @property
    def path(self) -> str:
        return str(self.request.scope["path"])

    @property
    def method(self) -> str:
        return str(self.request.scope["method"])


Endpoint = Callable[[Call], Awaitable[Response]]

T = TypeVar("T")
MAX_DOCUMENT_VALUES = 50_000  # a route's own JSON (a chat, a list of texts to embed) needs far fewer
_MAX_LENGTH_DIGITS = 19  # a longer length is refused unconverted: int() raises past 4,300 digits


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)


def inferd_error_body(error: RequestError, request_id: str) -> dict[str, Any]:
    return {"error": error.message, **error.fields, "request_id": request_id}


def error_response(error: RequestError, request_id: str, body: ErrorBody | None = None) -> Response:
    return json_response((body or inferd_error_body)(error, request_id), error.status, error.headers)


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
        internal = RequestError("internal server error; see the server log")
        return error_response(internal, call.request_id, call.error_body)


def _error_answer(call: Call, error: RequestError) -> Response:
    _log_error(call, error)
    return error_response(error, call.request_id, call.error_body)


def _log_error(call: Call, error: RequestError) -> None:
    level = logging.DEBUG if error.status in QUIET_STATUSES else logging.INFO if error.status < 500 else logging.ERROR
    if error.detail:  # a model raised: its traceback is for the operator, never for the caller
        log.log(max(level, logging.WARNING), "request %s: %d %s %s: %s; traceback: %s",
                call.request_id, error.status, call.method, call.path, error.message, error.detail.rstrip())  # fmt: skip
    else:
        log.log(level, "request %s: %d %s %s: %s", call.request_id, error.status, call.method, call.path, error.message)


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout_s: float
    source: str  # the setting that sets max_bytes, named in the 413's message


def body_limits(server: ServerConfig, model: str, max_batch_size: int, inputs: Sequence[TensorLimits]) -> BodyLimits:
    """max_request_bytes, or less where the model's declared inputs bound what a request can need."""
    bound = body_bound_bytes(max_batch_size, inputs)
    if bound is None or bound >= server.max_request_bytes:
        return BodyLimits(server.max_request_bytes, server.body_timeout_s, "max_request_bytes")
    source = f"what {max_batch_size} rows (max_batch_size) of model {model!r}'s declared inputs can need"
    return BodyLimits(bound, server.body_timeout_s, source)


async def read_decoded(
    request: Request,
    limits: BodyLimits,
    held: Reservation,
    admission: Admission,
    decode: Callable[[bytes], T],
    measure: Callable[[T, bytes], int],
    in_process: Callable[[bytes], Callable[[bytes], T] | None] | None = None,
) -> T:
    """Read the body within `limits` and the memory budget, decode it (off the loop when large),
    and leave `held` at what the decoded payload holds; the raw body is dropped on return.
    `in_process(body)` gives the (picklable) decode to run in the decoder process if the body is
    large, or None where this body must be decoded here."""
    body = await read_body(request, limits, held)
    remote = in_process(body) if in_process is not None and len(body) >= DECODE_IN_PROCESS_BYTES else None
    if remote is not None:
        decoded, payload_bytes = await admission.decode(len(body), True, _decode_and_measure, remote, measure, body)
    else:
        decoded, payload_bytes = await admission.decode(len(body), False, _decode_and_measure, decode, measure, body)
    held.resize(payload_bytes)
    return decoded


def _decode_and_measure(decode: Callable[[bytes], T], measure: Callable[[T, bytes], int], body: bytes) -> tuple[T, int]:
    decoded = decode(body)
    return decoded, measure(decoded, body)


async def read_body(request: Request, limits: BodyLimits, held: Reservation | None = None) -> bytes:
    """The whole body, or 413 past the limit, 408 for a client too slow to send it, 499 for one
    that left. With `held`, its bytes are reserved before they are read: all of Content-Length
    at once, else chunk by chunk; 429 when the budget has no room."""
    declared = content_length(request.headers.get("content-length"), limits)
    if declared is not None and held is not None:
        held.grow(declared)
    body = _BodyReader(request, limits, None if declared is not None else held)
    try:
        if sys.version_info >= (3, 11):  # a deadline on this task, without wait_for's extra task
            async with asyncio.timeout(limits.timeout_s):
                return await body.read()
        return await asyncio.wait_for(body.read(), limits.timeout_s)
    except asyncio.TimeoutError:
        raise BodyTooSlow(f"the request body did not arrive within {limits.timeout_s:g} s") from None
    except ClientDisconnect:
        of = "" if declared is None else f" of {declared}"
        raise ClientGone(f"the client disconnected after sending {body.size}{of} body bytes") from None


def content_length(value: str | None, limits: BodyLimits) -> int | None:
    """The Content-Length header as an int (None when absent), checked against the limit."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(f"Content-Length must be a non-negative integer, got {value[:40]!r}")
    if len(text) > _MAX_LENGTH_DIGITS:
        raise _too_large(text[:_MAX_LENGTH_DIGITS] + "...", limits)
    if int(text) > limits.max_bytes:
        raise _too_large(text, limits)
    return int(text)


class _BodyReader:
    def __init__(self, request: Request, limits: BodyLimits, held: Reservation | None) -> None:
        self.size = 0
        self._request = request
        self._limits = limits
        self._held = held

    async def read(self) -> bytes:
        chunks = []
        async for chunk in self._request.stream():
            self.size += len(chunk)
            if self.size > self._limits.max_bytes:
                raise _too_large(f"{self.size} or more", self._limits)
            if self._held is not None:
                self._held.grow(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)


def _too_large(size: str, limits: BodyLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body has {size} bytes; this route takes at most {limits.max_bytes} ({limits.source})")


async def read_json_document(
    request: Request, limits: BodyLimits, admission: Admission, held: Reservation | None = None
) -> Any:
    """A body that is one JSON document for the route itself (a prompt, a region to register),
    parsed off the loop when large: in the decoder process, so no parse holds the loop's GIL."""
    return (await read_json_document_and_bytes(request, limits, admission, held))[0]


async def read_json_document_and_bytes(
    request: Request, limits: BodyLimits, admission: Admission, held: Reservation | None = None
) -> tuple[Any, bytes]:
    """`read_json_document`, and the body's bytes as the client sent them."""
    body = await read_body(request, limits, held)
    return await admission.decode(len(body), True, parse_bounded_json, body), body


def parse_bounded_json(body: bytes | bytearray) -> Any:
    """`parse_json`, refusing a large document of more than MAX_DOCUMENT_VALUES values: taking
    it into the main process would cost about as much as the parse it avoided."""
    document = parse_json(body)
    if len(body) >= DECODE_IN_PROCESS_BYTES and _has_more_values(document, MAX_DOCUMENT_VALUES):
        raise PayloadTooLarge(
            f"the JSON body has more than {MAX_DOCUMENT_VALUES} values; this route takes at most that"
        )
    return document


def _has_more_values(document: Any, limit: int) -> bool:
    pending, seen = [document], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.values())
            seen += len(value)  # the keys
        elif isinstance(value, list):
            pending.extend(value)
    return False


def parse_json(body: bytes | bytearray) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
