"""Memory admission for the request path: a server-wide budget of request bytes held in the main
process, a share of it per model, and where large bodies are decoded (a thread, or the decoder
process for JSON: `inferd.decoder`).

A request reserves its body's bytes before they are read (all of Content-Length at once, or chunk
by chunk for a chunked body); once decoded, its reservation is resized to what its payload holds
(the body itself when binary tensors are views into it, counted once) and it is released when the
request is answered, fails, times out or its client leaves. Past the budget or the model's share,
a request is refused at once with 429 and Retry-After, as a full queue is: both say "too much is
waiting, retry later", and 503 stays the sign of a model with no ready worker. A body that could
never fit, even with nothing else held, gets 413.

Invariants: `held_bytes` is the sum of `held_by_model`, never exceeds `limit_bytes`, and each
model's entry never exceeds its share; every Reservation gives back all it took exactly once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np

from inferd.decoder import DECODE_IN_PROCESS_BYTES, Decoder
from inferd.errors import PayloadTooLarge, QueueFull
from inferd.segments import RegionArray

T = TypeVar("T")

# Bodies smaller than this decode on the event loop: measured with bench/decode_offload.py, a
# 64 KiB JSON body decodes in about 0.25 ms (0.5 ms for one of small objects), 1 MiB in 4.5 ms
# (13 ms), while a hop to the decode thread and back costs about 0.04 ms.
DECODE_OFF_LOOP_BYTES = 64 * 1024
RETRY_AFTER_S = 1
# The most a well-formed JSON number (or BOOL) takes, separators and pretty-printing included,
# and the room left for the rest of a request (names, shapes, parameters, an id).
JSON_BYTES_PER_ELEMENT = 64
REQUEST_OVERHEAD_BYTES = 64 * 1024
MIB = 1024 * 1024


class TensorLimits(Protocol):
    """A declared input: `shape` includes the batch dim; -1 where a dim varies."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...


class Admission:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.held_by_model: dict[str, int] = {}
        # One thread: decoding holds the GIL, so a second would add memory, not speed.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-decode")
        self.decoder_process = Decoder()

    def hold(self, model: str, fraction: float) -> Reservation:
        """An empty reservation for one request to `model`, whose share is `fraction` of the budget."""
        return Reservation(self, model, int(self.limit_bytes * fraction))

    async def decode(self, size_bytes: int, in_process: bool, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)`: in the decoder process for a large body that may (`in_process`: JSON,
        whose parse holds the GIL throughout), else on the decode thread when the body is large
        enough to stall the loop."""
        if in_process and size_bytes >= DECODE_IN_PROCESS_BYTES:
            return await self.decoder_process.run(function, *args)
        if size_bytes < DECODE_OFF_LOOP_BYTES:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self._decoder, function, *args)

    def _take(self, reservation: Reservation, nbytes: int) -> None:
        model = reservation.model
        model_held = self.held_by_model.get(model, 0)
        wanted = reservation.held_bytes + nbytes
        if wanted > reservation.limit_bytes or wanted > self.limit_bytes:
            raise _never_fits(reservation, wanted, self.limit_bytes)
        if self.held_bytes + nbytes > self.limit_bytes:
            raise QueueFull(
                f"the server holds {_mib(self.held_bytes)} of request bodies and payloads "
                f"(max_request_bytes_held {_mib(self.limit_bytes)}); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if model_held + nbytes > reservation.limit_bytes:
            raise QueueFull(
                f"requests to model {model!r} hold {_mib(model_held)} of request memory, its share "
                f"({_mib(reservation.limit_bytes)}, request_bytes_fraction of max_request_bytes_held); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.held_by_model[model] = model_held + nbytes
        self.held_bytes += nbytes

    def _give(self, model: str, nbytes: int) -> None:
        self.held_by_model[model] -= nbytes
        self.held_bytes -= nbytes


class Reservation:
    """The request bytes one request holds; a context manager that releases them on exit."""

    def __init__(self, admission: Admission, model: str, limit_bytes: int) -> None:
        self.model = model
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self._admission = admission

    def grow(self, nbytes: int) -> None:
        """Hold `nbytes` more, or raise 429 (budget full now) or 413 (it could never fit)."""
        if nbytes > 0:
            self._admission._take(self, nbytes)
            self.held_bytes += nbytes

    def resize(self, nbytes: int) -> None:
        if nbytes > self.held_bytes:
            self.grow(nbytes - self.held_bytes)
        elif nbytes < self.held_bytes:
            self._admission._give(self.model, self.held_bytes - nbytes)
            self.held_bytes = nbytes

    def release(self) -> None:
        self.resize(0)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def _never_fits(reservation: Reservation, wanted: int, server_limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"this request needs {wanted} bytes of request memory but model {reservation.model!r} may hold at "
        f"most {min(reservation.limit_bytes, server_limit)} (max_request_bytes_held x request_bytes_fraction)"
    )


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def body_bound_bytes(max_batch_size: int, inputs: Sequence[TensorLimits]) -> int | None:
    """The largest body a request within the model's declared inputs can need (JSON being the
    largest form), or None when there is no bound: no inputs given (a handler's items), a
    non-batch dim that varies, or a BYTES input."""
    if not inputs:
        return None
    elements = 0
    for spec in inputs:
        dims = list(spec.shape[1:])
        if spec.datatype == "BYTES" or any(dim < 0 for dim in dims):
            return None
        elements += max_batch_size * math.prod(dims)
    return REQUEST_OVERHEAD_BYTES + JSON_BYTES_PER_ELEMENT * elements


def payload_bytes(arrays: Iterable[np.ndarray], body: bytes) -> int:
    """What decoded tensors hold: fresh arrays by size, views into `body` as the body, once."""
    body_array = np.frombuffer(body, np.uint8)
    total, views_body = 0, False
    for array in arrays:
        if isinstance(array, RegionArray) and array.region_key is not None:
            continue  # it views a client's shared memory: nothing of ours
        if array.dtype == object:
            total += _objects_bytes(array)
        elif np.may_share_memory(array, body_array):
            views_body = True
        else:
            total += array.nbytes
    return total + (len(body) if views_body else 0)


def _objects_bytes(array: np.ndarray) -> int:
    # A bytes or str object costs its length plus about 40 bytes of header, and a pointer.
    return sum(len(item) + 48 for item in array.ravel().tolist() if isinstance(item, (bytes, str)))
