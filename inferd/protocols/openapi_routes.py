"""The OpenAPI operations of the routes that /openapi.json lists from the route tables themselves
(the OpenAI-compatible routes, generation, v2 statistics, system shared memory and the model
repository): each table's `Route` gives the path and its methods, this module what each method
takes and answers. A route that has no description here is still listed, with a generic
operation, so a new route can never be missing from the document."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from inferd.protocols.routing import Route

Schema = dict[str, Any]

ERROR_REF = {"$ref": "#/components/schemas/Error"}
OPENAI_ERROR_REF = {"$ref": "#/components/schemas/OpenAIError"}  # the /v1 routes' (openai_errors.py)
GENERATION_ERRORS = (400, 404, 413, 429, 499, 503, 504)
_STRING = {"type": "string"}
_INTEGER = {"type": "integer"}


def object_schema(properties: Schema, required: Iterable[str] = ()) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def json_content(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def operation(
    summary: str, ok: Schema, errors: Iterable[int] = (), error_schema: Schema = ERROR_REF, **extra: Any
) -> Schema:
    responses = {"200": ok, **{str(status): json_content(error_schema, "error") for status in errors}}
    return {"summary": summary, "responses": responses, **extra}


def described(routes: Iterable[Route], context: Mapping[str, Any]) -> dict[str, Any]:
    """Each route's path with an operation per method it takes; `{name}` becomes a path parameter."""
    paths: dict[str, Any] = {}
    for route in routes:
        for method in route.methods:
            describe = _DESCRIPTIONS.get((route.path, method))
            found = describe(context) if describe else operation(f"{method} {route.path}", json_content({}))
            if "{name}" in route.path:
                found = {**found, "parameters": [*found.get("parameters", []), _NAME_PARAMETER]}
            paths.setdefault(route.path, {})[method.lower()] = found
    return paths


def body(schema: Schema, example: Any | None = None) -> Schema:
    content: Schema = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"required": True, "content": {"application/json": content}}


def _events_or_json(schema: Schema) -> Schema:
    """A JSON answer, or Server-Sent Events where the request asked for "stream": true."""
    ok = json_content(schema)
    ok["content"]["text/event-stream"] = {"schema": _STRING}
    return ok


_NAME_PARAMETER = {"name": "name", "in": "path", "required": True, "schema": _STRING}


# ---- generation -------------------------------------------------------------------------------


def _sampling_properties() -> Schema:
    stop = {"oneOf": [_STRING, {"type": "array", "items": _STRING, "maxItems": 4}]}
    return {
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
        "seed": _INTEGER,
        "stop": stop,
        "stream": {"type": "boolean"},
    }


def _messages() -> Schema:
    message = object_schema({"role": _STRING, "content": _STRING}, ["role", "content"])
    return {"type": "array", "items": message, "minItems": 1}


def _usage() -> Schema:
    return object_schema({"prompt_tokens": _INTEGER, "completion_tokens": _INTEGER, "total_tokens": _INTEGER})


def generate_operation(model: str) -> Schema:
    properties = {"prompt": _STRING, "messages": _messages(), **_sampling_properties()}
    answer = object_schema(
        {"model": _STRING, "text": _STRING, "finish_reason": {"type": "string", "enum": ["stop", "length"]},
         "usage": _usage()},
        ["model", "text", "finish_reason", "usage"],
    )  # fmt: skip
    return operation(
        f"generate with {model!r}: a prompt or chat messages; with \"stream\": true, one event per step",
        _events_or_json(answer), GENERATION_ERRORS,
        requestBody=body(object_schema(properties), {"prompt": "What is the capital of France?", "max_tokens": 16}),
    )  # fmt: skip


# ---- OpenAI-compatible ------------------------------------------------------------------------


def _model_name(names: list[str]) -> Schema:
    return {"type": "string", "enum": names} if names else _STRING


def _completions(context: Mapping[str, Any], chat: bool) -> Schema:
    names = _model_name(context["generative_models"])
    prompt: Schema = (
        {"messages": _messages()}
        if chat
        else {"prompt": {"oneOf": [_STRING, {"type": "array", "items": _STRING, "minItems": 1, "maxItems": 1}]}}
    )
    properties = {"model": names, **prompt, **_sampling_properties(),
                  "stream_options": object_schema({"include_usage": {"type": "boolean"}})}  # fmt: skip
    required = ["model", "messages" if chat else "prompt"]
    kind = "chat.completion" if chat else "text_completion"
    answer = object_schema(
        {"id": _STRING, "object": {"type": "string", "enum": [kind]}, "created": _INTEGER, "model": _STRING,
         "choices": {"type": "array", "items": {"type": "object"}}, "usage": _usage()},
        ["id", "object", "created", "model", "choices"],
    )  # fmt: skip
    summary = "OpenAI chat completion" if chat else "OpenAI text completion"
    return operation(
        f"{summary}; with \"stream\": true, SSE chunks ending with data: [DONE]",
        _events_or_json(answer), GENERATION_ERRORS, OPENAI_ERROR_REF,
        requestBody=body(object_schema(properties, required)),
    )  # fmt: skip


def _embeddings(context: Mapping[str, Any]) -> Schema:
    texts = {"oneOf": [_STRING, {"type": "array", "items": _STRING, "minItems": 1}]}
    properties = {"model": _model_name(context["embedding_models"]), "input": texts,
                  "encoding_format": {"type": "string", "enum": ["float", "base64"]}}  # fmt: skip
    answer = object_schema(
        {"object": _STRING, "model": _STRING, "usage": {"type": "object"},
         "data": {"type": "array", "items": object_schema({"object": _STRING, "index": _INTEGER, "embedding": {}})}},
        ["object", "data", "model"],
    )  # fmt: skip
    return operation(
        "OpenAI embeddings from a handler model whose outputs are vectors", json_content(answer),
        (400, 404, 413, 422, 429, 503, 504), OPENAI_ERROR_REF,
        requestBody=body(object_schema(properties, ["model", "input"])),
    )  # fmt: skip


def _models(context: Mapping[str, Any]) -> Schema:
    model = object_schema({"id": _STRING, "object": _STRING, "created": _INTEGER, "owned_by": _STRING}, ["id"])
    answer = object_schema({"object": _STRING, "data": {"type": "array", "items": model}}, ["object", "data"])
    return operation("OpenAI model list: every model served", json_content(answer))


# ---- v2 statistics and system shared memory ---------------------------------------------------


def stats_operation(summary: str) -> Schema:
    stats = {"type": "array", "items": object_schema({"name": _STRING, "version": _STRING}, ["name", "version"])}
    return operation(summary, json_content(object_schema({"model_stats": stats}, ["model_stats"])), [404])


def _regions(context: Mapping[str, Any]) -> Schema:
    region = object_schema({"name": _STRING, "key": _STRING, "offset": _INTEGER, "byte_size": _INTEGER})
    return operation("registered system shared-memory regions", json_content({"type": "array", "items": region}), [400])


def _register(context: Mapping[str, Any]) -> Schema:
    fields = object_schema(
        {"key": _STRING, "offset": {"type": "integer", "minimum": 0}, "byte_size": {"type": "integer", "minimum": 1}},
        ["key", "byte_size"],
    )
    return operation(
        "register a POSIX shared-memory object as a region that v2 inputs and outputs may name",
        json_content({"type": "object"}), [400, 413], requestBody=body(fields, {"key": "/input0", "byte_size": 64}),
    )  # fmt: skip


def _unregister(context: Mapping[str, Any]) -> Schema:
    return operation(
        "unregister the region (or, without a name, every region)", json_content({"type": "object"}), [400]
    )


# ---- model repository (admin routes) ---------------------------------------------------------

_ADMIN_ERRORS = (400, 401, 403, 404, 413)
_REPOSITORY_ENTRY = object_schema(
    {"name": _STRING, "version": _STRING,
     "state": {"type": "string", "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]}, "reason": _STRING},
    ["name", "version", "state", "reason"],
)  # fmt: skip


def _repository_index(context: Mapping[str, Any]) -> Schema:
    return operation(
        "every model of the config and its state; \"ready\": true lists only the ready ones (admin route)",
        json_content({"type": "array", "items": _REPOSITORY_ENTRY}), _ADMIN_ERRORS,
        requestBody=body(object_schema({"ready": {"type": "boolean"}}), {"ready": False}),
    )  # fmt: skip


def _repository_action(summary: str, parameters: Schema) -> Callable[[Mapping[str, Any]], Schema]:
    def described_action(context: Mapping[str, Any]) -> Schema:
        return operation(
            summary, json_content(_REPOSITORY_ENTRY), (*_ADMIN_ERRORS, 500),
            requestBody=body(object_schema({"parameters": object_schema(parameters)}), {"parameters": {}}),
        )  # fmt: skip

    return described_action


_REPOSITORY = "/v2/repository"
_SHM = "/v2/systemsharedmemory"
_DESCRIPTIONS: dict[tuple[str, str], Callable[[Mapping[str, Any]], Schema]] = {
    ("/v1/models", "GET"): _models,
    ("/v1/chat/completions", "POST"): lambda context: _completions(context, chat=True),
    ("/v1/completions", "POST"): lambda context: _completions(context, chat=False),
    ("/v1/embeddings", "POST"): _embeddings,
    ("/v2/models/stats", "GET"): lambda context: stats_operation("v2 statistics of every model"),
    (f"{_REPOSITORY}/index", "POST"): _repository_index,
    (f"{_REPOSITORY}/models/{{name}}/load", "POST"): _repository_action(
        "start the model's workers (a pipeline's or split's: its models'); answers its state (admin route)", {}
    ),
    (f"{_REPOSITORY}/models/{{name}}/unload", "POST"): _repository_action(
        "answer what the model accepted, then end its workers; answers its state (admin route)",
        {"unload_dependents": {"type": "boolean"}},
    ),
    (f"{_SHM}/status", "GET"): _regions,
    (f"{_SHM}/unregister", "POST"): _unregister,
    (f"{_SHM}/region/{{name}}/status", "GET"): _regions,
    (f"{_SHM}/region/{{name}}/register", "POST"): _register,
    (f"{_SHM}/region/{{name}}/unregister", "POST"): _unregister,
}
