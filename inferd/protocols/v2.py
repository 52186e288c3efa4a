"""The Open Inference Protocol (KServe v2) REST routes, over the same batchers as the native route.

Every model has one version, "1". Tensor inputs are checked against the model's declared (or
discovered) names, datatypes and shapes before they are queued; binary tensors stay numpy views of
the request body until the worker. Handler models take one BYTES (or numeric) input whose
elements are their items, and answer with one output tensor built from their encoded outputs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from inferd import __version__
from inferd.daemon import Daemon, ServedModel
from inferd.datatypes import datatype_of_array
from inferd.errors import BadRequest, ModelNotFound, ModelUnavailable, RequestError
from inferd.messages import Payload
from inferd.protocols import native
from inferd.protocols.http import answer, error_response, json_response, read_body
from inferd.protocols.v2_codec import (
    V2DecodeError,
    V2EncodeError,
    V2InferRequest,
    decode_infer_request,
    encode_infer_response,
    model_config,
    model_metadata,
    parse_header_length,
)

VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
HEADER_LENGTH = "Inference-Header-Content-Length"

Endpoint = Callable[[Request], Awaitable[Response]]


def routes(daemon: Daemon) -> list[BaseRoute]:
    def model_routes(suffix: str, endpoint: Endpoint, methods: list[str]) -> list[BaseRoute]:
        return [
            Route(f"/v2/models/{{name}}{suffix}", endpoint, methods=methods),
            Route(f"/v2/models/{{name}}/versions/{{version}}{suffix}", endpoint, methods=methods),
        ]

    return [
        Route(
            "/v2", lambda request: json_response({"name": "inferd", "version": __version__, "extensions": EXTENSIONS})
        ),
        Route("/v2/health/live", lambda request: json_response({"live": True})),
        Route("/v2/health/ready", lambda request: json_response({"ready": daemon.ready}, 200 if daemon.ready else 503)),
        *model_routes("", _metadata(daemon), ["GET"]),
        *model_routes("/ready", _model_ready(daemon), ["GET"]),
        *model_routes("/config", _config(daemon), ["GET"]),
        *model_routes("/infer", infer_endpoint(daemon), ["POST"]),
    ]


def infer_path_params(path: str) -> dict[str, str] | None:
    """{"name": ..., "version": ...} for an infer path, else None (the fast path's router)."""
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer":
        return {"name": parts[3]}
    if len(parts) == 7 and parts[:3] == ["", "v2", "models"] and parts[4] == "versions" and parts[6] == "infer":
        return {"name": parts[3], "version": parts[5]}
    return None


def _find(daemon: Daemon, request: Request) -> ServedModel:
    name = request.path_params["name"]
    model = daemon.models.get(name)
    if model is None:
        raise ModelNotFound(f"no model named {name!r}; models: {sorted(daemon.models)}")
    version = request.path_params.get("version", VERSION)
    if version != VERSION:
        raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: [{VERSION!r}]")
    return model


def _guarded(handler: Callable[[Request], Response]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            return handler(request)
        except RequestError as error:
            return error_response(error)

    return endpoint


def _metadata(daemon: Daemon) -> Endpoint:
    def metadata(request: Request) -> Response:
        model = _find(daemon, request)
        return json_response(model_metadata(model.name, [VERSION], model.platform, model.inputs, model.outputs))

    return _guarded(metadata)


def _model_ready(daemon: Daemon) -> Endpoint:
    def ready(request: Request) -> Response:
        model = _find(daemon, request)
        is_ready = bool(model.workers.ready_count)
        return json_response({"name": model.name, "ready": is_ready}, 200 if is_ready else 503)

    return _guarded(ready)


def _config(daemon: Daemon) -> Endpoint:
    def config(request: Request) -> Response:
        model = _find(daemon, request)
        settings = model.config
        return json_response(
            model_config(
                model.name,
                settings.max_batch_size,
                model.inputs,
                model.outputs,
                platform=model.platform,
                max_queue_delay_us=int((settings.batch_timeout_ms or 0) * 1000)
                if settings.max_batch_size > 1
                else None,
                instance_count=settings.workers_per_device,
                instance_kind="KIND_CPU" if settings.device == "cpu" else "KIND_GPU",
            )
        )

    return _guarded(config)


def infer_endpoint(daemon: Daemon) -> Endpoint:
    server = daemon.config.server

    async def infer(request: Request) -> Response:
        try:
            model = _find(daemon, request)
        except RequestError as error:
            return error_response(error)

        async def produce() -> Response:
            body = await read_body(request, server.max_request_bytes, server.body_timeout_s)
            try:
                decoded = decode_infer_request(body, parse_header_length(request.headers.get(HEADER_LENGTH)))
            except V2DecodeError as error:
                raise BadRequest(str(error)) from None
            if model.outputs:
                _check(decoded.check_requested_outputs, [o.name for o in model.outputs])
            payload, items, key = _to_payload(model, decoded)
            result = await model.batcher.infer(payload, items, key)
            return _respond(model, decoded, result)

        return await answer(model.metrics.request_done, produce)

    return infer


def _check(check: Callable[[Any], None], argument: Any) -> None:
    try:
        check(argument)
    except V2DecodeError as error:
        raise BadRequest(str(error)) from None


def _to_payload(model: ServedModel, request: V2InferRequest) -> tuple[Payload, int, Any]:
    if model.is_handler:
        return _handler_items(request)
    expected = {spec.name: spec for spec in model.inputs}
    if set(request.inputs) != set(expected):
        raise BadRequest(
            f"model {model.name!r} takes inputs {sorted(expected)}; the request gave {sorted(request.inputs)}"
        )
    for name, array in request.inputs.items():
        spec = expected[name]
        if request.datatypes[name] != spec.datatype:
            raise BadRequest(f"input {name!r}: datatype {request.datatypes[name]} but the model takes {spec.datatype}")
        native.check_shape(spec, array.shape)
    rows = {len(array) for array in request.inputs.values()}
    if len(rows) > 1:
        raise BadRequest(f"inputs have different batch sizes {sorted(rows)}; every input needs the same rows")
    key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in request.inputs.items())
    return dict(request.inputs), rows.pop(), key


def _handler_items(request: V2InferRequest) -> tuple[Payload, int, Any]:
    if len(request.inputs) != 1:
        raise BadRequest(f"a handler model takes one input tensor of items; the request gave {len(request.inputs)}")
    array = next(iter(request.inputs.values()))
    if array.ndim == 0 or len(array) == 0:
        raise BadRequest("the input needs a batch dimension with at least one item")
    items = [_item(element) for element in array]
    return items, len(items), None


def _item(element: Any) -> Any:
    if isinstance(element, bytes):
        try:
            return element.decode("utf-8")
        except UnicodeDecodeError:
            return element
    if isinstance(element, np.ndarray):
        return element.tolist()
    return element.item() if isinstance(element, np.generic) else element


def _respond(model: ServedModel, request: V2InferRequest, result: Payload) -> Response:
    outputs = _handler_outputs(model, result) if isinstance(result, list) else result
    _check(request.check_requested_outputs, list(outputs))
    selected, binary = request.select_outputs(outputs)
    datatypes = {spec.name: spec.datatype for spec in model.outputs}
    try:
        body, header_length = encode_infer_response(model.name, VERSION, request.id, selected, binary, datatypes)
    except V2EncodeError as error:
        raise BadRequest(str(error)) from None
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


def _handler_outputs(model: ServedModel, encoded: list[Any]) -> dict[str, np.ndarray]:
    name = model.outputs[0].name if model.outputs else "output"
    try:
        array = np.asarray(encoded)
        if array.dtype.kind == "U":
            array = np.array([value.encode() for value in array.ravel()], dtype=object).reshape(array.shape)
        datatype_of_array(array)
    except (ValueError, KeyError) as error:
        raise ModelUnavailable(f"model {model.name!r}: its outputs do not form one tensor ({error})") from None
    return {name: array}
