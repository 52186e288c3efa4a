"""inferd's own generation route: POST /models/<name>/generate with {"prompt": "..."} or
{"messages": [...]}, answered as one JSON object, or with "stream": true as Server-Sent Events:
one `data: {"text": ...}` event per step, the last with its finish_reason and usage; a failure
after the first event is an `event: error` with {"error": ...}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from inferd.daemon import Daemon, ServedModel
from inferd.errors import BadRequest, ModelNotFound
from inferd.generation.params import GenerationParams, read_messages, read_params, read_prompt
from inferd.generation.scheduler import Stream
from inferd.messages import Chunk
from inferd.priority import header_priority
from inferd.protocols.http import BodyLimits, Call, Endpoint, json_response, read_json_document_and_bytes
from inferd.protocols.routing import Match, Resolver, Route
from inferd.protocols.streaming import Completion, EventStream, collect, first_chunk, sse


def route_of(daemon: Daemon) -> Route:
    return Route("/models/{name}/generate", {"POST": _generate(daemon)}, inference=True)


def resolver(daemon: Daemon) -> Resolver:
    route = route_of(daemon)

    def resolve(path: str) -> Match | None:
        parts = path.split("/")
        if len(parts) != 4 or parts[:2] != ["", "models"] or parts[3] != "generate":
            return None
        return Match(route, daemon.find(parts[2]), {"name": parts[2]})

    return resolve


def generative_model(daemon: Daemon, name: Any) -> ServedModel:
    """The generative model `name` names, or the 4xx that says what exists."""
    model = daemon.find(name) if isinstance(name, str) else None
    if model is None:
        names = sorted(n for n, m in daemon.models.items() if m.generator is not None)
        raise ModelNotFound(f"no generative model named {name!r}; generative models: {names}")
    if model.generator is None:
        raise BadRequest(
            f"model {name!r} does not generate text (no 'generation' section); use {model.config.url_path}"
        )
    return model


async def read_json_body(call: Call, daemon: Daemon, model: ServedModel | None) -> dict[str, Any]:
    return (await read_json_body_and_bytes(call, daemon, model))[0]


async def read_json_body_and_bytes(
    call: Call, daemon: Daemon, model: ServedModel | None
) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object, and as the bytes the client sent."""
    server = daemon.config.server
    limits = BodyLimits(server.max_request_bytes, server.body_timeout_s, "max_request_bytes")
    fraction = model.config.request_bytes_fraction if model is not None else 0.5
    with daemon.admission.hold(model.name if model else "-", fraction) as held:
        body, raw = await read_json_document_and_bytes(call.request, limits, daemon.admission, held)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body, raw


def submit(
    model: ServedModel, prompt: str | list[dict[str, str]], params: GenerationParams, priority: int = 0
) -> Stream:
    assert model.generator is not None
    generator = model.generator
    return generator.submit(prompt, params.max_tokens, params.max_prompt_tokens, params.sampling, params.stop, priority)


def _generate(daemon: Daemon) -> Endpoint:
    async def generate(call: Call) -> Response:
        model = generative_model(daemon, call.params["name"])
        assert model.config.generation is not None
        priority = header_priority(call.request.headers, model.config)
        body = await read_json_body(call, daemon, model)
        prompt = read_messages(body["messages"]) if "messages" in body else read_prompt(body.get("prompt"))
        params = read_params(body, model.name, model.config.generation)
        stream = submit(model, prompt, params, priority)
        if params.stream:
            first = await first_chunk(model.name, stream, call.request.receive)
            return EventStream(_events(model.name, first, stream), stream)
        completion = await collect(model.name, stream, call.request.receive)
        return json_response(_answer(model.name, completion))

    return generate


def _answer(model: str, completion: Completion) -> dict[str, Any]:
    return {
        "model": model, "text": completion.text,
        "finish_reason": completion.finish_reason, "usage": completion.usage(),
    }  # fmt: skip


async def _events(model: str, first: Chunk, stream: Stream) -> AsyncIterator[bytes]:
    completion = Completion()
    chunk: Chunk | None = first
    while chunk is not None:
        if chunk.failure is not None:
            yield sse({"error": f"model {model!r}: {chunk.failure.message}"}, event="error")
            return
        completion.add(chunk)
        event: dict[str, Any] = {"text": chunk.text}
        if chunk.final:
            event.update(finish_reason=completion.finish_reason, usage=completion.usage())
        yield sse(event)
        chunk = None if chunk.final else await stream.__anext__()
