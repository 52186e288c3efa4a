"""A streamed predict: POST a handler model's native route with `"stream": true` beside its
`"inputs"`, where the handler's predict yields. The answer is Server-Sent Events: one
`data: {"outputs": [...]}` per yield (the request's own items' chunks, or the bare chunk for a
bare item), then `event: done` with `data: {"chunks": N}`; a failure after the first event is an
`event: error` with `{"error": ...}`. Until the first chunk nothing is sent, so a refusal is still
a JSON error answer. The client leaving cancels the request (its generator is closed once no
request of its predict call is left)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response

from inferd.daemon import ServedModel
from inferd.errors import BadRequest
from inferd.generation.scheduler import Scheduler, Stream
from inferd.messages import Chunk, StreamPredict
from inferd.protocols.http import Call
from inferd.protocols.native import DecodedRequest
from inferd.protocols.streaming import EventStream, first_chunk, sse


async def answer(call: Call, model: ServedModel, decoded: DecodedRequest) -> Response:
    streamer = _streamer(model)
    payload = decoded.payload
    stream = streamer.open(lambda sequence_id: StreamPredict(sequence_id, payload), decoded.items)
    first = await first_chunk(model.name, stream, call.request.receive)
    return EventStream(_events(model.name, first, stream, decoded.bare_item), stream)


def _streamer(model: ServedModel) -> Scheduler:
    info = model.workers.info
    if model.streamer is None or (info is not None and not info.streams):
        raise BadRequest(
            f"model {model.name!r} does not stream (only a handler whose predict yields does); "
            'send the request without "stream"'
        )
    return model.streamer


async def _events(model: str, first: Chunk, stream: Stream, bare_item: bool) -> AsyncIterator[bytes]:
    chunk, sent = first, 0
    while not chunk.final:
        yield _event({"outputs": _outputs(chunk, bare_item)})
        sent += 1
        chunk = await stream.__anext__()
    if chunk.failure is not None:
        yield sse({"error": f"model {model!r}: {chunk.failure.message}"}, event="error")
    else:
        yield sse({"chunks": sent}, event="done")


def _outputs(chunk: Chunk, bare_item: bool) -> Any:
    outputs = chunk.outputs or []
    return outputs[0] if bare_item and outputs else outputs


def _event(data: dict[str, Any]) -> bytes:
    return sse(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY))
