"""How a gRPC error answer behaves when the call has already ended: grpc core ends a call whose
deadline passed on its own, and our own deadline timer can fire in the same instant; the status
we then try to send cannot go out. The core's side of that race cannot be timed from a test, so
the context here stands in for grpc's ServicerContext at that moment; test_grpc.py drives real
deadlines end to end."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from inferd.errors import BadRequest, RequestTimedOut
from inferd.protocols.grpc_service import _abort


class Context:
    def __init__(self, remaining_s: float, done: bool, abort_raises: BaseException) -> None:
        self._remaining_s, self._done, self._abort_raises = remaining_s, done, abort_raises

    def time_remaining(self) -> float:
        return self._remaining_s

    def done(self) -> bool:
        return self._done

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise self._abort_raises


async def test_a_call_that_ended_first_is_a_cancelled_handler_not_a_failure() -> None:
    ended = Context(0.0, done=True, abort_raises=RuntimeError('Failed "execute_batch"'))  # as grpc's core says it
    with pytest.raises(asyncio.CancelledError):
        await _abort(ended, "ModelInfer", RequestTimedOut("the call's deadline passed"))  # type: ignore[arg-type]


async def test_a_live_call_keeps_its_abort_and_its_failures() -> None:
    sent = Context(1.0, done=False, abort_raises=grpc.aio.AbortError())
    with pytest.raises(grpc.aio.AbortError):
        await _abort(sent, "ModelInfer", BadRequest("bad"))  # type: ignore[arg-type]
    broken = Context(1.0, done=False, abort_raises=RuntimeError("something else"))
    with pytest.raises(RuntimeError):
        await _abort(broken, "ModelInfer", BadRequest("bad"))  # type: ignore[arg-type]
