"""The OpenAPI 3.0 document of every route this server answers, built from the models it serves now.

Each model gets concrete paths (its native route, /v2/models/<name>/... with and without the
version, and a generative model's /models/<name>/generate) whose request schemas name its own
inputs, datatypes and fixed dims, so a client generator or a fuzzer builds requests the model can
take. The v2 model routes, the OpenAI-compatible, v2 statistics, shared-memory and model
repository routes are listed from the same route tables the router serves
(inferd.protocols.openapi_routes). Every error answer is `{"error": str, "request_id": str}`,
except on the OpenAI routes, whose errors read as OpenAI's (`{"error": {"message", "type",
"param", "code"}, "request_id"}`). The document is
rebuilt per request: a reload that adds or removes a model changes it at once. Where API keys are
set, it needs one, like the routes it describes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inferd import __version__
from inferd.daemon import Daemon, ServedModel
from inferd.datatypes import DATATYPES
from inferd.messages import TensorInfo
from inferd.protocols import generate, openai, repository, shm_routes, v2
from inferd.protocols.openapi_routes import (
    Schema,
    described,
    generate_operation,
    json_content,
    object_schema,
    operation,
    stats_operation,
)
from inferd.protocols.v2 import HEADER_LENGTH

_SMALL_ROW_ELEMENTS = 256  # rows up to this size are described exactly; larger ones only by nesting
_INTEGER_RANGES = {
    "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1), "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}  # fmt: skip
_FLOAT_LIMITS = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "BF16": 3.3895313892515355e38}


def document(daemon: Daemon, metrics_route: bool = True) -> Schema:
    models = list(daemon.models.values())
    paths: dict[str, Any] = {**_service_paths(metrics_route), **_v2_server_paths(), **_table_paths(daemon)}
    by_suffix, _ = v2.model_routes(daemon)
    for model in models:
        paths[model.config.url_path] = {"post": _native_predict(model)}
        versioned = f"/v2/models/{model.public_name}/versions/{model.version}"
        is_default = daemon.find(model.public_name) is model
        for prefix in (f"/v2/models/{model.public_name}", versioned) if is_default else (versioned,):
            paths.update(_v2_model_paths(model, prefix, by_suffix))
        if model.generator is not None:
            route = generate.route_of(daemon).path.replace("{name}", model.name)
            paths[route] = {"post": generate_operation(model.name)}
    spec: Schema = {
        "openapi": "3.0.3",
        "info": {"title": "inferd", "version": __version__},
        "paths": paths,
        "components": {"schemas": _components()},
    }
    if daemon.config.server.auth is not None:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    return spec


# ---- shared pieces --------------------------------------------------------------------------


def _components() -> Schema:
    tensor_metadata = _object(
        {"name": {"type": "string"}, "datatype": {"type": "string", "enum": list(DATATYPES)},
         "shape": {"type": "array", "items": {"type": "integer"}}},
        ["name", "datatype", "shape"],
    )  # fmt: skip
    openai_error = _object(
        {"message": {"type": "string"}, "type": {"type": "string"},
         "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}},
        ["message", "type"],
    )  # fmt: skip
    return {
        "Error": _object({"error": {"type": "string"}, "request_id": {"type": "string"}}, ["error", "request_id"]),
        "OpenAIError": _object({"error": openai_error, "request_id": {"type": "string"}}, ["error", "request_id"]),
        "TensorMetadata": tensor_metadata,
        "ModelMetadata": _object(
            {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
             "platform": {"type": "string"},
             "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
             "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}}},
            ["name", "versions", "platform", "inputs", "outputs"],
        ),
        "InferResponse": _object(
            {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
             "outputs": {"type": "array", "items": _object(
                 {"name": {"type": "string"}, "datatype": {"type": "string"},
                  "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
                  "parameters": {"type": "object"}},
                 ["name", "datatype", "shape"])}},
            ["model_name", "model_version", "outputs"],
        ),
    }  # fmt: skip


_object, _json, _operation = object_schema, json_content, operation


def _html() -> Schema:
    return {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}


def _table_paths(daemon: Daemon) -> dict[str, Any]:
    """The OpenAI-compatible, every-model statistics, shared-memory and model repository routes,
    from their tables."""
    context = {
        "generative_models": sorted(n for n, m in daemon.models.items() if m.generator is not None),
        "embedding_models": sorted(n for n, m in daemon.models.items() if m.is_handler and m.generator is None),
    }
    _, every_model = v2.model_routes(daemon)
    tables = [*openai.routes(daemon), every_model, *shm_routes.table(daemon).values()]
    tables += [*repository.routes(daemon), *repository.model_routes(daemon).values()]
    return described(tables, context)


def _get(summary: str, ok: Schema, errors: Iterable[int] = ()) -> Schema:
    return {"get": _operation(summary, ok, errors)}


# ---- service routes -------------------------------------------------------------------------


def _service_paths(metrics_route: bool) -> dict[str, Any]:
    paths = {
        "/openapi.json": _get("this document", _json({"type": "object"})),
        "/models": _get("the models served, their routes, workers and queues", _json(
            _object({"models": {"type": "array", "items": {"type": "object"}}}, ["models"]))),
        "/healthz": _get("the process is alive", _json(_object({"status": {"type": "string"}}, ["status"]))),
        "/readyz": _get("200 when every model has a ready worker, else 503", _json(
            _object({"ready": {"type": "boolean"}, "models": {"type": "object"}}, ["ready", "models"])), [503]),
        "/": _get("the status page: one HTML file whose script shows /status.json", _html()),
        "/status.json": _get("each model and version: state, queue depth, workers and their CPUs and devices, "
                             "live requests/s and p50/p99, GPU memory; and the machine's CPUs and GPUs", _json(
            _object({"models": {"type": "array", "items": {"type": "object"}}, "machine": {"type": "object"}},
                    ["models", "machine"]))),
        "/admin/reload": {"post": _operation(
            "re-read the config file and apply the difference (loopback only unless admin keys are set)",
            _json({"type": "object"}), [400, 401, 403])},
    }  # fmt: skip
    if metrics_route:
        text = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        paths["/metrics"] = _get("Prometheus metrics", text)
    return paths


def _v2_server_paths() -> dict[str, Any]:
    return {
        "/v2": _get("server metadata", _json(_object(
            {"name": {"type": "string"}, "version": {"type": "string"},
             "extensions": {"type": "array", "items": {"type": "string"}}}, ["name", "version", "extensions"]))),
        "/v2/health/live": _get("server liveness", _json(_object({"live": {"type": "boolean"}}, ["live"]))),
        "/v2/health/ready": _get("server readiness", _json(_object({"ready": {"type": "boolean"}}, ["ready"])), [503]),
    }  # fmt: skip


# ---- native route ---------------------------------------------------------------------------


def _native_predict(model: ServedModel) -> Schema:
    if model.is_handler:
        item = _json_element(model.inputs[0].datatype) if len(model.inputs) == 1 else {}
        inputs: Schema = {"oneOf": [{"type": "array", "items": item, "minItems": 1}, item]}
        example: Any = [_example_element(model.inputs[0].datatype)] if len(model.inputs) == 1 else ["item"]
    elif len(model.inputs) == 1:
        inputs, example = _nested(model.inputs[0]), _example_rows(model.inputs[0])
    else:
        inputs = _object({spec.name: _nested(spec) for spec in model.inputs}, [s.name for s in model.inputs])
        inputs["additionalProperties"] = False
        example = {spec.name: _example_rows(spec) for spec in model.inputs}
    body = _object({"inputs": inputs}, ["inputs"])
    ok = _json(_object({"outputs": {}}, ["outputs"]))
    if model.is_handler:  # a handler whose predict yields streams its chunks as events
        body["properties"]["stream"] = {"type": "boolean"}
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    request = {"required": True, "content": {"application/json": {"schema": body, "example": {"inputs": example}}}}
    return _operation(f"run {model.name!r}: the batch dimension first", ok, _REQUEST_ERRORS, requestBody=request)


_REQUEST_ERRORS = (400, 404, 408, 413, 422, 429, 503, 504)


def _nested(spec: TensorInfo) -> Schema:
    """Nested arrays as deep as the shape, exact in each fixed dim where a row is small."""
    fixed_row = _small_fixed_row(spec)
    schema = _json_element(spec.datatype)
    for dim in reversed(spec.shape):
        schema = {"type": "array", "items": schema}
        if fixed_row and dim >= 0:
            schema["minItems"] = schema["maxItems"] = dim
    schema["minItems"] = 1
    return schema


def _small_fixed_row(spec: TensorInfo) -> bool:
    return all(dim >= 0 for dim in spec.shape[1:]) and _row_elements(spec) <= _SMALL_ROW_ELEMENTS


def _row_elements(spec: TensorInfo) -> int:
    count = 1
    for dim in spec.shape[1:]:
        count *= max(dim, 1)
    return count


def _json_element(datatype: str) -> Schema:
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype == "BYTES":
        return {"type": "string"}
    if datatype in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[datatype]
        return {"type": "integer", "minimum": low, "maximum": high}
    if datatype in _FLOAT_LIMITS:
        return {"type": "number", "minimum": -_FLOAT_LIMITS[datatype], "maximum": _FLOAT_LIMITS[datatype]}
    return {"type": "number"}


def _example_element(datatype: str) -> Any:
    return {"BOOL": False, "BYTES": "an example"}.get(datatype, 0.5 if datatype.startswith(("FP", "BF")) else 1)


def _example_rows(spec: TensorInfo) -> list[Any]:
    value: Any = _example_element(spec.datatype)
    for dim in reversed(spec.shape[1:]):
        value = [value] * max(dim, 1)
    return [value]


# ---- v2 model routes ------------------------------------------------------------------------


def _v2_model_paths(model: ServedModel, prefix: str, by_suffix: dict[str, Any]) -> dict[str, Any]:
    """The model's v2 routes (the router's own table) under `prefix`."""
    operations = {
        "": _get("model metadata", _json({"$ref": "#/components/schemas/ModelMetadata"}), [404]),
        "ready": _get("model readiness", _json(
            _object({"name": {"type": "string"}, "ready": {"type": "boolean"}}, ["name", "ready"])), [404, 503]),
        "config": _get("Triton-style model configuration", _json({"type": "object"}), [404]),
        "infer": {"post": _v2_infer(model)},
        "stats": {"get": stats_operation(f"v2 statistics of {model.name!r}")},
    }  # fmt: skip
    return {f"{prefix}/{suffix}".rstrip("/"): operations[suffix] for suffix in by_suffix}


def _v2_infer(model: ServedModel) -> Schema:
    header = {
        "name": HEADER_LENGTH, "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
        "description": "the length of the JSON part when binary tensor data follows it",
    }  # fmt: skip
    json_body = {"schema": _v2_request(model), "example": _v2_example(model)}
    binary_body = {"schema": {"type": "string", "format": "binary"}}
    request = {"required": True, "content": {"application/json": json_body, "application/octet-stream": binary_body}}
    ok = _json({"$ref": "#/components/schemas/InferResponse"})
    ok["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return _operation(f"v2 inference on {model.name!r}", ok, _REQUEST_ERRORS, parameters=[header], requestBody=request)


def _v2_request(model: ServedModel) -> Schema:
    inputs = [_v2_input(spec) for spec in model.inputs]
    count = 1 if model.is_handler else len(inputs)
    output_names = [spec.name for spec in model.outputs]
    requested = _object(
        {"name": {"type": "string", "enum": output_names} if output_names else {"type": "string"},
         "parameters": _object({"binary_data": {"type": "boolean"}})},
        ["name"],
    )  # fmt: skip
    return _object(
        {"id": {"type": "string"},
         "parameters": _object({"binary_data_output": {"type": "boolean"}}),
         "inputs": {"type": "array", "items": inputs[0] if len(inputs) == 1 else {"oneOf": inputs},
                    "minItems": count, "maxItems": count},
         "outputs": {"type": "array", "items": requested}},
        ["inputs"],
    )  # fmt: skip


def _v2_input(spec: TensorInfo) -> Schema:
    """Any input of this name and datatype; where a row is small and fixed, also exact 1- and 2-row
    inputs, whose shape and data agree (a schema cannot tie a data length to a shape otherwise)."""
    any_rows = _object(
        {"name": {"type": "string", "enum": [spec.name]},
         "datatype": {"type": "string", "enum": [spec.datatype]},
         "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                   "minItems": len(spec.shape), "maxItems": len(spec.shape)},
         "data": {"type": "array", "items": _json_element(spec.datatype)},
         "parameters": _object({"binary_data_size": {"type": "integer", "minimum": 0}})},
        ["name", "datatype", "shape"],
    )  # fmt: skip
    if not _small_fixed_row(spec):
        return any_rows
    return {"anyOf": [_v2_input_of(spec, rows) for rows in (1, 2)] + [any_rows]}


def _v2_input_of(spec: TensorInfo, rows: int) -> Schema:
    count = rows * _row_elements(spec)
    return _object(
        {"name": {"type": "string", "enum": [spec.name]},
         "datatype": {"type": "string", "enum": [spec.datatype]},
         "shape": {"type": "array", "enum": [[rows, *spec.shape[1:]]]},
         "data": {"type": "array", "items": _json_element(spec.datatype), "minItems": count, "maxItems": count}},
        ["name", "datatype", "shape", "data"],
    )  # fmt: skip


def _v2_example(model: ServedModel) -> Schema:
    inputs = []
    for spec in model.inputs[:1] if model.is_handler else model.inputs:
        shape = [1, *(max(dim, 1) for dim in spec.shape[1:])]
        count = 1
        for dim in shape:
            count *= dim
        data = [_example_element(spec.datatype)] * count
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data})
    return {"inputs": inputs}
