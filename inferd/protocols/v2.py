"""The Open Inference Protocol (KServe v2) REST routes, over the same batchers as the native route.

A model without versions has one, "1"; a versioned model lists its own (inferd/versions.py), and
the paths without a version reach its default. Tensor inputs are checked against the model's declared (or
discovered) names, datatypes and shapes before they are queued; binary tensors stay numpy views of
the request body until the worker. Handler models take one BYTES (or numeric) input whose
elements are their items, or the named inputs they declare, and answer with their declared outputs
built from their encoded outputs (v2_items.py). Triton's statistics and classification extensions
are v2_stats.py and v2_classification.py; unknown models answer in Triton's wording.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from inferd import __version__
from inferd.admission import Reservation, payload_bytes
from inferd.daemon import Daemon, ServedModel
from inferd.decoder import DECODE_IN_PROCESS_BYTES
from inferd.errors import BadRequest, ModelNotFound
from inferd.messages import Payload
from inferd.priority import header_priority, request_priority
from inferd.protocols import native, shm_routes
from inferd.protocols.disconnect import unless_client_leaves
from inferd.protocols.http import Call, Endpoint, body_limits, json_response, read_decoded
from inferd.protocols.routing import Match, Resolver, Route
from inferd.protocols.v2_classification import classify, read_labels
from inferd.protocols.v2_codec import (
    InputLimits,
    V2DecodeError,
    V2EncodeError,
    V2InferRequest,
    decode_infer_request,
    encode_infer_response,
    model_config,
    model_metadata,
    parse_header_length,
)
from inferd.protocols.v2_items import handler_payload, handler_tensors
from inferd.protocols.v2_stats import statistics
from inferd.versions import public_names

VERSION = "1"
EXTENSIONS = [
    "binary_tensor_data", "model_configuration", "statistics", "classification", "system_shared_memory",
    "model_repository",
]  # fmt: skip
HEADER_LENGTH = "Inference-Header-Content-Length"
_MODEL_PREFIX = "/v2/models/{name}"
T = TypeVar("T")


def routes(daemon: Daemon) -> list[Route]:
    """The server-wide v2 routes; model routes come from `resolver`."""
    server = {"name": "inferd", "version": __version__, "extensions": EXTENSIONS}

    async def metadata(call: Call) -> Response:
        return json_response(server)

    async def live(call: Call) -> Response:
        return json_response({"live": True})

    async def ready(call: Call) -> Response:
        return json_response({"ready": daemon.ready}, 200 if daemon.ready else 503)

    return [
        Route("/v2", {"GET": metadata}),
        Route("/v2/health/live", {"GET": live}),
        Route("/v2/health/ready", {"GET": ready}),
    ]


def model_routes(daemon: Daemon) -> tuple[dict[str, Route], Route]:
    """Each model's routes by suffix ("" is its metadata), and the stats route of every model."""
    by_suffix = {
        "": Route(_MODEL_PREFIX, {"GET": lambda call: _metadata(daemon, _find(daemon, call))}),
        "ready": Route(f"{_MODEL_PREFIX}/ready", {"GET": lambda call: _model_ready(_find(daemon, call))}),
        "config": Route(f"{_MODEL_PREFIX}/config", {"GET": lambda call: _config(_find(daemon, call))}),
        "infer": Route(f"{_MODEL_PREFIX}/infer", {"POST": infer_endpoint(daemon)}, inference=True),
        "stats": Route(f"{_MODEL_PREFIX}/stats", {"GET": lambda call: _stats(daemon, [_find(daemon, call)])}),
    }
    return by_suffix, Route("/v2/models/stats", {"GET": lambda call: _stats(daemon, list(daemon.models.values()))})


def resolver(daemon: Daemon) -> Resolver:
    """/v2/models/<name>[/versions/<version>][/ready|/config|/infer]: the model it names, if served."""
    by_suffix, every_model = model_routes(daemon)
    shared_memory = shm_routes.resolver(daemon)

    def resolve(path: str) -> Match | None:
        if path.startswith(shm_routes.PREFIX):
            return shared_memory(path)
        parts = path.split("/")
        if len(parts) < 4 or parts[:3] != ["", "v2", "models"] or not parts[3]:
            return None
        if len(parts) == 4 and parts[3] == "stats":
            return Match(every_model)
        params = {"name": parts[3]}
        rest = parts[4:]
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            params["version"] = rest[1]
            rest = rest[2:]
        route = by_suffix.get(rest[0]) if len(rest) == 1 else by_suffix[""] if not rest else None
        if route is None:
            return None
        return Match(route, daemon.find(params["name"], params.get("version")), params)  # none: the endpoint says why

    return resolve


def _find(daemon: Daemon, call: Call) -> ServedModel:
    if call.model is not None:
        return call.model
    # Triton's wording: its clients (and scripts written against Triton) look for this prefix.
    name, version = call.params["name"], call.params.get("version")
    if daemon.find(name) is not None and version is not None:
        versions = daemon.versions.versions_of(name)
        raise ModelNotFound(f"Request for unknown model: {name!r} version {version} is not found; versions: {versions}")
    models = public_names(daemon.models)
    raise ModelNotFound(f"Request for unknown model: {name!r} is not found; models: {models}")


def _labels(model: ServedModel, output: str) -> tuple[str, ...]:
    spec = next((spec for spec in model.config.outputs or () if spec.name == output), None)
    return () if spec is None or spec.label_filename is None else read_labels(spec.label_filename)


async def _stats(daemon: Daemon, models: list[ServedModel]) -> Response:
    return json_response(statistics((model.public_name, model.version, model.metrics.tally) for model in models))


async def _metadata(daemon: Daemon, model: ServedModel) -> Response:
    versions = daemon.versions.versions_of(model.public_name)
    metadata = model_metadata(model.public_name, versions, model.platform, model.inputs, model.outputs)
    return json_response({**metadata, "state": daemon.pool.state(model)})  # beyond v2: loaded or not


async def _model_ready(model: ServedModel) -> Response:
    is_ready = bool(model.workers.ready_count)
    return json_response({"name": model.public_name, "ready": is_ready}, 200 if is_ready else 503)


async def _config(model: ServedModel) -> Response:
    return json_response(config_document(model))


def config_document(model: ServedModel) -> dict[str, Any]:
    """The model's configuration in the JSON form of Triton's ModelConfig."""
    settings = model.config
    return model_config(
        model.public_name,
        settings.max_batch_size,
        model.inputs,
        model.outputs,
        platform=model.platform,
        max_queue_delay_us=int((settings.batch_timeout_ms or 0) * 1000) if settings.max_batch_size > 1 else None,
        instance_count=settings.workers_per_device,
        instance_kind="KIND_CPU" if settings.device == "cpu" else "KIND_GPU",
        formats={spec.name: spec.format for spec in settings.inputs or () if spec.format},
    )


def infer_endpoint(daemon: Daemon) -> Endpoint:
    async def infer(call: Call) -> Response:
        model = _find(daemon, call)
        request = call.request
        header_length = _parse(parse_header_length, request.headers.get(HEADER_LENGTH))
        priority = header_priority(request.headers, model.config)
        with daemon.admission.hold(model.name, model.config.request_bytes_fraction) as held:
            decoded = await _read_infer_request(request, daemon, model, held, header_length)
            priority = request_priority(decoded.parameters, model.config, priority)
            if model.outputs:
                _check(decoded.check_requested_outputs, [o.name for o in model.outputs])
            payload, items, key = to_payload(model, decoded)
            infer = model.batcher.infer(payload, items, key, priority)
            result = await unless_client_leaves(request.receive, infer, request.scope)
            return _respond(model, decoded, result, daemon)

    return infer


async def _read_infer_request(
    request: Request, daemon: Daemon, model: ServedModel, held: Reservation, header_length: int | None
) -> V2InferRequest:
    """The body, read within its limits and `held`'s budget; every input's name, datatype and shape
    checked against the model before its data is decoded (off the loop when the body is large)."""
    max_batch_size, inputs = model.config.max_batch_size, model.inputs
    input_limits = InputLimits(max_batch_size, None if model.is_handler and not _named_inputs(model) else inputs)
    limits = body_limits(daemon.config.server, model.name, max_batch_size, () if model.is_handler else inputs)
    decode = functools.partial(
        _parse, decode_infer_request, header_length=header_length, limits=input_limits, regions=daemon.shared_memory
    )
    in_process = functools.partial(_decode_in_process, header_length=header_length, limits=input_limits)
    return await read_decoded(request, limits, held, daemon.admission, decode, _held_bytes, in_process)


def _decode_in_process(
    body: bytes, header_length: int | None, limits: InputLimits
) -> Callable[[bytes], V2InferRequest] | None:
    """The decode for the decoder process when the body's JSON is large (its parse would stall the
    loop); None when it is small (binary data after a short JSON header decodes here, as views)."""
    json_end = len(body) if header_length is None else min(header_length, len(body))
    if json_end < DECODE_IN_PROCESS_BYTES:
        return None
    if body.find(b'"shared_memory_region"', 0, json_end) >= 0:  # regions are mapped in this process only
        raise BadRequest(
            f"the request's JSON has {json_end} bytes and names shared-memory regions; a request whose "
            f"data is in shared memory keeps its JSON under {DECODE_IN_PROCESS_BYTES} bytes"
        )
    return functools.partial(_parse, decode_infer_request, header_length=header_length, limits=limits, regions=None)


def _parse(parse: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return parse(*args, **kwargs)
    except V2DecodeError as error:
        raise BadRequest(str(error)) from None


def _held_bytes(request: V2InferRequest, body: bytes) -> int:
    return payload_bytes(request.inputs.values(), body)


def _check(check: Callable[[Any], None], argument: Any) -> None:
    try:
        check(argument)
    except V2DecodeError as error:
        raise BadRequest(str(error)) from None


def to_payload(model: ServedModel, request: V2InferRequest) -> tuple[Payload, int, Any]:
    if model.is_handler:
        payload, items = handler_payload(request, _named_inputs(model))
        return payload, items, None
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


def _named_inputs(model: ServedModel) -> list[str] | None:
    """A handler's declared inputs when it takes several (each item a dict of them), else None."""
    names = [spec.name for spec in model.config.inputs or ()]
    return names if len(names) > 1 else None


def _respond(model: ServedModel, request: V2InferRequest, result: Payload, daemon: Daemon) -> Response:
    if isinstance(result, list):
        outputs = handler_outputs(model, result)
    else:
        assert isinstance(result, dict)
        outputs = result
    _check(request.check_requested_outputs, list(outputs))
    selected, binary = request.select_outputs(outputs)
    datatypes = {spec.name: spec.datatype for spec in model.outputs}
    for wanted in request.requested_outputs:
        if wanted.classification is not None:
            labels = _labels(model, wanted.name)
            selected[wanted.name] = classify(wanted.name, selected[wanted.name], wanted.classification, labels)
            datatypes[wanted.name] = "BYTES"
    try:
        targets = {wanted.name: wanted.region for wanted in request.requested_outputs if wanted.region is not None}
        body, header_length = encode_infer_response(
            model.public_name, model.version, request.id, selected, binary, datatypes, targets, daemon.shared_memory
        )
    except V2EncodeError as error:
        raise BadRequest(str(error)) from None
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


def handler_outputs(model: ServedModel, encoded: list[Any]) -> dict[str, Any]:
    """A handler's encoded outputs as one tensor per declared output (gRPC answers with them too)."""
    return handler_tensors(model.name, encoded, model.outputs)
