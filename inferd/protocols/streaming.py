"""What every generation front shares: collecting a stream into one answer, taking its first
chunk before any header is sent (so a refused prompt is still a 4xx JSON answer), and sending
Server-Sent Events, stopping the sequence as soon as the client leaves."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import StreamingResponse

from inferd.errors import ClientGone
from inferd.generation.scheduler import Stream, failure_error
from inferd.messages import Chunk
from inferd.protocols.disconnect import Receive, unless_client_leaves

log = logging.getLogger(__name__)

Send = Callable[[Mapping[str, Any]], Any]


@dataclass
class Completion:
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, chunk: Chunk) -> None:
        self.text += chunk.text
        self.completion_tokens += chunk.tokens
        self.prompt_tokens = chunk.prompt_tokens if chunk.prompt_tokens is not None else self.prompt_tokens
        self.finish_reason = chunk.finish_reason or self.finish_reason

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


async def collect(model: str, stream: Stream, receive: Receive) -> Completion:
    """The whole generation as one answer; a failure is raised as its RequestError."""
    try:
        return await unless_client_leaves(receive, _collect(model, stream))
    finally:
        stream.close()


async def _collect(model: str, stream: Stream) -> Completion:
    completion = Completion()
    async for chunk in stream:
        if chunk.failure is not None:
            raise failure_error(model, chunk.failure)
        completion.add(chunk)
    return completion


async def first_chunk(model: str, stream: Stream, receive: Receive) -> Chunk:
    """The stream's first chunk, raising its failure as an error while no header has gone out."""
    try:
        chunk = await unless_client_leaves(receive, stream.__anext__())
    except BaseException:
        stream.close()
        raise
    if chunk.failure is not None:
        stream.close()
        raise failure_error(model, chunk.failure)
    return chunk


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return head + b"data: " + body + b"\n\n"


class EventStream(StreamingResponse):
    """An SSE answer from `events`; a client that leaves closes `stream` (its slot frees at once)."""

    def __init__(self, events: AsyncIterator[bytes], stream: Stream) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, headers=headers, media_type="text/event-stream")
        self._events = events
        self._stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await unless_client_leaves(receive, self._pump(send))
        except (ClientGone, OSError):
            log.info("a client left its event stream (sequence %d)", self._stream.sequence_id)
        finally:
            self._stream.close()

    async def _pump(self, send: Any) -> None:
        async for event in self._events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
