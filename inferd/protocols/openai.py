"""The OpenAI-compatible routes: GET /v1/models, POST /v1/chat/completions, /v1/completions (JSON,
or with "stream": true SSE chunks ending with `data: [DONE]`) and /v1/embeddings (any handler
model whose outputs are vectors). The body's `model` names the inferd model; chat models apply
their chat template in the worker (the handler's `tokenize`)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from starlette.responses import Response

from inferd.config import ModelConfig
from inferd.daemon import Daemon
from inferd.errors import BadRequest, ModelNotFound
from inferd.generation.params import read_messages, read_params, read_prompt
from inferd.generation.scheduler import Stream
from inferd.messages import Chunk
from inferd.priority import header_priority
from inferd.protocols import native
from inferd.protocols.disconnect import unless_client_leaves
from inferd.protocols.generate import generative_model, read_json_body_and_bytes, submit
from inferd.protocols.http import Call, Endpoint, json_response
from inferd.protocols.middleware import through_model_middleware
from inferd.protocols.openai_errors import openai_error_body
from inferd.protocols.routing import Route
from inferd.protocols.streaming import Completion, EventStream, collect, first_chunk, sse

DONE = b"data: [DONE]\n\n"
Render = Callable[[Chunk | None, Completion], dict[str, Any]]  # one stream chunk's choice


def routes(daemon: Daemon) -> list[Route]:
    return [
        _route("/v1/models", {"GET": _models(daemon)}, inference=False),
        _route("/v1/chat/completions", {"POST": _completions(daemon, chat=True)}),
        _route("/v1/completions", {"POST": _completions(daemon, chat=False)}),
        _route("/v1/embeddings", {"POST": _embeddings(daemon)}),
    ]


def _route(path: str, methods: dict[str, Endpoint], inference: bool = True) -> Route:
    return Route(path, methods, inference=inference, error_body=openai_error_body)


def _models(daemon: Daemon) -> Endpoint:
    async def models(call: Call) -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "inferd"} for name in model_ids(daemon)]
        return json_response({"object": "list", "data": data})

    return models


def model_ids(daemon: Daemon) -> list[str]:
    """What `model` may name: every served model, and a versioned model's own name (its default)."""
    versioned = [name for name in daemon.versions.defaults if daemon.find(name) is not None]
    return versioned + [name for name in daemon.models if name not in versioned]


def _completions(daemon: Daemon, chat: bool) -> Endpoint:
    async def completions(call: Call) -> Response:
        body, raw = await read_json_body_and_bytes(call, daemon, None)
        model = generative_model(daemon, body.get("model"))
        call.model = model  # named by the body, not the path: the front counts the request under it
        if (detour := through_model_middleware(model.config, raw)) is not None:
            return detour
        del raw
        assert model.config.generation is not None
        priority = _admitted(daemon, call, model.config)
        prompt = read_messages(body.get("messages")) if chat else read_prompt(body.get("prompt"))
        params = read_params(body, model.name, model.config.generation)
        stream = submit(model, prompt, params, priority)
        head = _head(call, model.name, chat)
        if params.stream:
            first = await first_chunk(model.name, stream, call.request.receive)
            usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
            return EventStream(_events(head, first, stream, chat, bool(usage)), stream)
        completion = await collect(model.name, stream, call.request.receive)
        choice = _chat_choice(completion) if chat else _text_choice(completion)
        return json_response({**head, "choices": [choice], "usage": completion.usage()})

    return completions


def _admitted(daemon: Daemon, call: Call, model: ModelConfig) -> int:
    """The request's priority, once the model its body names has a token for it (the key's was
    taken before the body was read)."""
    priority = header_priority(call.request.headers, model)
    daemon.rate_limits.admit(call.key_name, model, key_met_already=True)
    return priority


def _head(call: Call, model: str, chat: bool) -> dict[str, Any]:
    kind = "chat.completion" if chat else "text_completion"
    prefix = "chatcmpl" if chat else "cmpl"
    return {"id": f"{prefix}-{call.request_id}", "object": kind, "created": int(time.time()), "model": model}


def _chat_choice(completion: Completion) -> dict[str, Any]:
    message = {"role": "assistant", "content": completion.text}
    return {"index": 0, "message": message, "finish_reason": completion.finish_reason, "logprobs": None}


def _text_choice(completion: Completion) -> dict[str, Any]:
    return {"index": 0, "text": completion.text, "finish_reason": completion.finish_reason, "logprobs": None}


async def _events(
    head: dict[str, Any], first: Chunk, stream: Stream, chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    head = {**head, "object": "chat.completion.chunk"} if chat else head
    completion = Completion()
    chunk: Chunk | None = first
    role_sent = False
    while chunk is not None:
        if chunk.failure is not None:
            yield sse({"error": {"message": chunk.failure.message, "type": chunk.failure.error_type}})
            return
        completion.add(chunk)
        finish = completion.finish_reason if chunk.final else None
        if chat:
            delta: dict[str, Any] = (
                {"content": chunk.text} if role_sent else {"role": "assistant", "content": chunk.text}
            )
            role_sent = True
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": chunk.text, "finish_reason": finish, "logprobs": None}
        yield sse({**head, "choices": [choice]})
        chunk = None if chunk.final else await stream.__anext__()
    if include_usage:
        yield sse({**head, "choices": [], "usage": completion.usage()})
    yield DONE


def _embeddings(daemon: Daemon) -> Endpoint:
    async def embeddings(call: Call) -> Response:
        body, raw = await read_json_body_and_bytes(call, daemon, None)
        name = body.get("model")
        model = daemon.find(name) if isinstance(name, str) else None
        if model is None or not model.is_handler or model.generator is not None:
            names = sorted(n for n, m in daemon.models.items() if m.is_handler and m.generator is None)
            raise ModelNotFound(f"no embedding model named {name!r}; handler models: {names}")
        call.model = model  # named by the body, not the path: the front counts the request under it
        if (detour := through_model_middleware(model.config, raw)) is not None:
            return detour
        del raw
        priority = _admitted(daemon, call, model.config)
        texts = _texts(body.get("input"))
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise BadRequest(f"encoding_format must be 'float' or 'base64', got {encoding!r}")
        native.check_rows(len(texts), model.config.max_batch_size)
        infer = model.batcher.infer(texts, len(texts), None, priority)
        vectors = await unless_client_leaves(call.request.receive, infer)
        data = [_embedding(model.name, i, vector, encoding) for i, vector in enumerate(vectors)]  # type: ignore[arg-type]
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        return json_response({"object": "list", "data": data, "model": model.name, "usage": usage})

    return embeddings


def _texts(value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("input must be a string or a non-empty list of strings")
    return texts


def _embedding(model: str, index: int, vector: Any, encoding: str) -> dict[str, Any]:
    try:
        array = np.asarray(vector, dtype="<f4").reshape(-1)
    except (ValueError, TypeError):  # a handler model that answers something else than vectors
        raise BadRequest(f"model {model!r} does not answer vectors: it has no embeddings") from None
    value: Any = base64.b64encode(array.tobytes()).decode() if encoding == "base64" else array
    return {"object": "embedding", "index": index, "embedding": value}
