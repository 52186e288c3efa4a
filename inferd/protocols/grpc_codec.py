"""KServe v2 gRPC messages (Triton's `inference.GRPCInferenceService`) <-> numpy tensors.

No gRPC here: a ModelInferRequest becomes the same `V2InferRequest` the REST route decodes, plus
where any outputs go in shared memory; outputs become a ModelInferResponse. An input's data comes
from, in this order of precedence: a shared-memory region its parameters name, its entry in
`raw_input_contents` (one entry per input not in shared memory, in input order, as
tritonclient sends them), or its typed `contents`. Outputs always answer in
`raw_output_contents` (as Triton does), with an empty entry for an output written to shared
memory so that entries stay aligned with outputs. Every problem raises BadRequest naming the
input and what is expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from inferd.datatypes import (
    DATATYPES,
    MAX_DIMS,
    Datatype,
    TensorDataError,
    array_from_binary,
    binary_data,
    datatype_named,
    datatype_of_array,
)
from inferd.errors import BadRequest
from inferd.protocols.grpc_pb import grpc_service_pb2 as pb
from inferd.protocols.grpc_wire import InferCall, InferReply
from inferd.protocols.shm import RegionRef, SharedMemory
from inferd.protocols.v2_codec import RequestedOutput, V2InferRequest

# The typed `contents` field that carries each datatype; FP16 and BF16 have none (raw only).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_MAX_SHAPE_SPAN = 2**53


def parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def parameters_of(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def decode_infer_request(call: InferCall, regions: SharedMemory) -> tuple[V2InferRequest, dict[str, RegionRef]]:
    """The request as the REST codec would give it, and the shared-memory targets of its outputs."""
    message, raw = call.message, call.raw_input_contents
    raw_needed = sum(1 for tensor in message.inputs if _region_ref(tensor.parameters, "") is None)
    if raw and len(raw) != raw_needed:
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries but {raw_needed} inputs are not in shared memory; "
            "give one entry per such input, in input order, or none and use contents"
        )
    headers = _headers(message.inputs)  # every name, datatype and shape checked before any data is read
    raw_entries = iter(raw)
    inputs = {
        tensor.name: _decode_input(tensor, *headers[tensor.name], raw_entries if raw else None, regions)
        for tensor in message.inputs
    }
    datatypes = {name: datatype.name for name, (datatype, _) in headers.items()}
    requested, targets = _requested_outputs(message.outputs)
    request = V2InferRequest(
        id=message.id or None,
        parameters=parameters_of(message.parameters),
        inputs=inputs,
        datatypes=datatypes,
        requested_outputs=requested,
        binary_data_output=True,
    )
    return request, targets


def _headers(tensors: Any) -> dict[str, tuple[Datatype, tuple[int, ...]]]:
    headers: dict[str, tuple[Datatype, tuple[int, ...]]] = {}
    for tensor in tensors:
        if tensor.name in headers or not tensor.name:
            raise BadRequest(f"input {tensor.name!r} is unnamed or given twice; name each input once")
        headers[tensor.name] = _header(tensor)
    return headers


def _header(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[Datatype, tuple[int, ...]]:
    what = f"input {tensor.name!r}"
    datatype = DATATYPES.get(tensor.datatype)
    if datatype is None:
        raise BadRequest(f"{what}: datatype must be one of {', '.join(DATATYPES)}, got {tensor.datatype[:40]!r}")
    shape = tuple(tensor.shape)
    if len(shape) > MAX_DIMS or any(dim < 0 for dim in shape):
        raise BadRequest(f"{what}: shape must be at most {MAX_DIMS} non-negative dims, got {list(shape)[:8]}")
    if math.prod(max(dim, 1) for dim in shape) > _MAX_SHAPE_SPAN:
        raise BadRequest(f"{what}: shape {list(shape)} is too large")
    return datatype, shape


def _decode_input(
    tensor: pb.ModelInferRequest.InferInputTensor,
    datatype: Datatype,
    shape: tuple[int, ...],
    raw_entries: Any,
    regions: SharedMemory,
) -> np.ndarray:
    what = f"input {tensor.name!r}"
    ref = _region_ref(tensor.parameters, what)
    try:
        if ref is not None:
            return regions.tensor(ref, datatype, shape, what)
        if raw_entries is not None:
            return array_from_binary(next(raw_entries), datatype, shape)
        return _from_contents(tensor, datatype, shape)
    except TensorDataError as error:
        raise BadRequest(f"{what}: {error}") from None


def _from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, datatype: Datatype, shape: tuple[int, ...]
) -> np.ndarray:
    what = f"input {tensor.name!r}"
    field = CONTENTS_FIELDS.get(datatype.name)
    if field is None:
        raise BadRequest(f"{what}: {datatype.name} has no typed contents field; send it in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(f"{what}: shape {list(shape)} has {count} elements but contents.{field} has {len(values)}")
    if datatype.is_bytes:
        return np.array(list(values), dtype=object).reshape(shape)
    out_of_range = BadRequest(f"{what}: contents.{field} holds values out of {datatype.name}'s range")
    try:
        array = np.array(list(values), dtype=datatype.numpy_dtype)
    except OverflowError:  # numpy refuses a Python int its dtype cannot hold
        raise out_of_range from None
    if not datatype.name.startswith("FP") and datatype.name != "BOOL" and not np.array_equal(array, list(values)):
        raise out_of_range
    return array.reshape(shape)


def _requested_outputs(
    outputs: Any,
) -> tuple[tuple[RequestedOutput, ...], dict[str, RegionRef]]:
    requested: list[RequestedOutput] = []
    targets: dict[str, RegionRef] = {}
    for output in outputs:
        what = f"requested output {output.name!r}"
        if not output.name or any(earlier.name == output.name for earlier in requested):
            raise BadRequest(f"{what} is unnamed or requested twice; name each output once")
        requested.append(RequestedOutput(output.name, True))
        ref = _region_ref(output.parameters, what)
        if ref is not None:
            targets[output.name] = ref
    return tuple(requested), targets


def _region_ref(parameters: Mapping[str, pb.InferParameter], what: str) -> RegionRef | None:
    if "shared_memory_region" not in parameters:
        return None
    values = parameters_of(parameters)
    name, size, offset = (
        values.get(k) for k in ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
    )
    if not isinstance(name, str) or not isinstance(size, int) or not isinstance(offset or 0, int):
        raise BadRequest(
            f"{what}: shared_memory_region needs a string, shared_memory_byte_size an int64 "
            "(and shared_memory_offset, if given, an int64)"
        )
    return RegionRef(name, int(offset or 0), size)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
    targets: Mapping[str, RegionRef],
    regions: SharedMemory,
) -> InferReply:
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    raw: list[memoryview] = []
    for name, array in outputs.items():
        datatype = _output_datatype(name, array, datatypes)
        entry = response.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        try:
            data = binary_data(array, datatype)
        except TensorDataError as error:
            raise BadRequest(f"output {name!r}: {error}") from None
        target = targets.get(name)
        if target is None:
            raw.append(memoryview(data))  # a view: the serializer copies it once, into the message
            continue
        regions.write(target, data, f"output {name!r}")
        entry.parameters["shared_memory_region"].string_param = target.name
        entry.parameters["shared_memory_byte_size"].int64_param = memoryview(data).nbytes
        if target.offset:
            entry.parameters["shared_memory_offset"].int64_param = target.offset
        raw.append(memoryview(b""))  # keeps later outputs' entries at their index
    return InferReply(response, raw)


def _output_datatype(name: str, array: np.ndarray, datatypes: Mapping[str, str]) -> Datatype:
    try:
        return datatype_named(datatypes[name]) if name in datatypes else datatype_of_array(array)
    except KeyError as error:
        raise BadRequest(f"output {name!r}: {error.args[0]}") from None
