"""Open Inference Protocol (KServe v2) REST bodies <-> numpy tensors, as Triton's HTTP endpoint speaks it.

No HTTP here: the route hands over the body bytes and the Inference-Header-Content-Length header, and
gets back the body and that header's value for the answer.

Request body: a JSON object, optionally followed by binary tensor data (Triton's binary tensor data
extension). With the header, the first `header_length` bytes are the JSON; each input whose
parameters carry `binary_data_size` takes that many bytes, in input order, from the rest, which they
must use up exactly (datatypes.py describes the binary form). Binary inputs come back as read-only
numpy views into the body (no copy); JSON `data`, flat or nested as the shape says, becomes a fresh
array of the input's dtype.

Response body: `{"model_name", "model_version", "id"?, "outputs": [{"name", "datatype", "shape",
"data" | "parameters": {"binary_data_size"}}]}`, then the binary outputs' bytes in output order.

Every problem with a request raises V2DecodeError, whose message names the field, the value and what
is expected; nothing else escapes the decoder, however the body is malformed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import orjson

from inferd.admission import TensorLimits
from inferd.datatypes import (
    DATATYPES,
    MAX_DIMS,
    Datatype,
    TensorDataError,
    array_from_binary,
    array_from_json,
    binary_data,
    datatype_named,
    datatype_of_array,
    json_data,
    json_type_name,
    shape_text,
)
from inferd.protocols.shm import RegionRef, SharedMemory

# Bound on the product of a shape's non-zero dims: numpy refuses a shape past int64 even when empty.
_MAX_SHAPE_SPAN = 2**53
_MAX_LENGTH_DIGITS = 19  # a longer length is refused unconverted: int() raises past 4,300 digits
_ELEMENTS_PER_SLICE = 64 * 1024  # about 0.5 ms of conversion from a JSON list
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_offset")
# Request parameters the server itself reads; what is left reaches a handler model.
_SERVER_PARAMETERS = frozenset(
    {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"}
)
# Triton reserves these request parameters for itself (server/src/common.h) and refuses them.
_RESERVED_PARAMETERS = frozenset({"headers"})
_RESERVED_PREFIX = "triton_"
_SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
# Output parameters the server itself reads.
_OUTPUT_SERVER_PARAMETERS = frozenset(
    {"binary_data", "classification", "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"}
)
_SHM_PARAMETERS = ("shared_memory_region", "shared_memory_offset")  # served where regions are given


class V2DecodeError(ValueError):
    """A v2 request body is malformed; the message says what is wrong and what is expected."""


class V2EncodeError(ValueError):
    """Outputs cannot be written as a v2 response (an unknown dtype, BYTES that are not UTF-8 in JSON)."""


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary_data: bool | None  # None: not said; the request's binary_data_output decides
    classification: int | None = None  # top K as "score:index[:label]" strings, Triton's extension
    parameters: dict[str, Any] = field(default_factory=dict)  # the rest, for a handler model
    region: RegionRef | None = None  # where the output is to be written instead, if anywhere


@dataclass(frozen=True, slots=True)
class V2InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]  # in request order, shaped as the request says
    datatypes: dict[str, str]  # v2 datatype of each input; BF16 arrives as uint16 bits
    requested_outputs: tuple[RequestedOutput, ...]  # empty: every output, as the protocol says
    binary_data_output: bool

    @property
    def model_parameters(self) -> dict[str, Any]:
        """The request's parameters that are for the model, not for the server."""
        return {key: value for key, value in self.parameters.items() if key not in _SERVER_PARAMETERS}

    @property
    def output_parameters(self) -> dict[str, dict[str, Any]]:
        """Each requested output's own parameters that are for the model."""
        return {wanted.name: wanted.parameters for wanted in self.requested_outputs if wanted.parameters}

    def check_requested_outputs(self, output_names: Collection[str]) -> None:
        """Refuse the request, before any computing, if it asks for an output the model lacks."""
        for wanted in self.requested_outputs:
            if wanted.name not in output_names:
                known = ", ".join(repr(name) for name in output_names)
                raise V2DecodeError(f"requested output {wanted.name!r} is not an output of this model (it has {known})")

    def select_outputs(self, produced: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], set[str]]:
        """The outputs to answer with, in the order asked, and which of them go binary."""
        if not self.requested_outputs:
            return dict(produced), set(produced) if self.binary_data_output else set()
        self.check_requested_outputs(produced.keys())
        selected = {wanted.name: produced[wanted.name] for wanted in self.requested_outputs}
        binary = {
            wanted.name
            for wanted in self.requested_outputs
            if (self.binary_data_output if wanted.binary_data is None else wanted.binary_data)
        }
        return selected, binary


@dataclass(frozen=True, slots=True)
class InputLimits:
    """What a model takes, checked against each input's name, datatype and shape before any of
    its data is decoded. `inputs` None: a handler model with one input, which takes one input of
    any name and datatype whose elements along the batch dim are its items."""

    max_batch_size: int
    inputs: Sequence[TensorSpecLike] | None

    def check_count(self, count: int) -> None:
        wanted = 1 if self.inputs is None else len(self.inputs)
        if count > wanted:  # before any input is looked at: a request may list a million
            raise V2DecodeError(f"the request gives {count} inputs; this model takes {wanted}")

    def check(self, headers: Sequence[_InputHeader]) -> None:
        if self.inputs is None:
            self._check_items(headers)
            return
        expected = {spec.name: spec for spec in self.inputs}
        if {header.name for header in headers} != set(expected):
            given = sorted(header.name for header in headers)
            raise V2DecodeError(f"this model takes inputs {sorted(expected)}; the request gave {given}")
        for header in headers:
            _check_declared(header, expected[header.name], self.max_batch_size)
        rows = {header.shape[0] for header in headers}
        if len(rows) > 1:
            raise V2DecodeError(f"inputs have different batch sizes {sorted(rows)}; every input needs the same rows")

    def _check_items(self, headers: Sequence[_InputHeader]) -> None:
        if len(headers) != 1:
            raise V2DecodeError(f"a handler model takes one input tensor of items; the request gave {len(headers)}")
        shape = headers[0].shape
        if not shape or shape[0] == 0:
            raise V2DecodeError("the input needs a batch dimension with at least one item")
        _check_batch(headers[0].name, shape[0], self.max_batch_size)


def _check_declared(header: _InputHeader, spec: TensorSpecLike, max_batch_size: int) -> None:
    what = f"input {header.name!r}"
    if header.datatype.name != spec.datatype:
        raise V2DecodeError(f"{what}: datatype {header.datatype.name} but the model takes {spec.datatype}")
    shape, declared = header.shape, tuple(spec.shape)
    if not shape or shape[0] == 0:
        raise V2DecodeError(f"{what}: needs a batch dimension with at least one row")
    if (len(declared) > 1 or declared[0] != -1) and (
        len(shape) != len(declared) or any(want not in (-1, got) for want, got in zip(declared, shape))
    ):
        raise V2DecodeError(f"{what}: shape {list(shape)} does not match {list(declared)} (-1 = any)")
    _check_batch(header.name, shape[0], max_batch_size)


def _check_batch(name: str, rows: int, max_batch_size: int) -> None:
    if rows > max_batch_size:
        raise V2DecodeError(
            f"input {name!r} carries {rows} items but the model takes at most {max_batch_size} per batch "
            "(max_batch_size); split it into smaller requests"
        )


def parse_header_length(value: str | None) -> int | None:
    """The Inference-Header-Content-Length header as an int; None when the header is absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise V2DecodeError(f"Inference-Header-Content-Length must be a non-negative integer, got {value[:40]!r}")
    if len(text) > _MAX_LENGTH_DIGITS:
        raise V2DecodeError(
            f"Inference-Header-Content-Length has {len(text)} digits, more than any body; "
            "it must give the length of the JSON part"
        )
    return int(text)


def decode_infer_request(
    body: bytes, header_length: int | None, limits: InputLimits | None = None, regions: SharedMemory | None = None
) -> V2InferRequest:
    """Decode a v2 infer request body; `header_length` is Inference-Header-Content-Length.
    With `limits`, every input's header is checked against them before any tensor data is read.
    With `regions`, inputs and outputs may name shared-memory regions (else that is refused)."""
    view = memoryview(body).cast("B")
    json_end = _json_length(header_length, len(view))
    # orjson reads bytes faster than a memoryview; with binary data only the JSON part is copied.
    text = body if isinstance(body, bytes) and json_end == len(body) else bytes(view[:json_end])
    request = _expect_object(_load_json(text, header_length), "the request body")
    del text
    parameters = _optional_object(request, "parameters", "the request")
    _reject_reserved(parameters)
    binary_data_output = _optional_bool(parameters, "binary_data_output", "request parameters")
    headers = _input_headers(request.get("inputs"), limits, regions is not None)
    if limits is not None:
        limits.check(headers)
    reader = _BinaryReader(view, json_end, header_length is not None)
    inputs = {header.name: _decode_data(header, reader, regions) for header in headers}
    reader.expect_end()
    return V2InferRequest(
        id=_optional_str(request, "id", "the request"),
        parameters=parameters,
        inputs=inputs,
        datatypes={header.name: header.datatype.name for header in headers},
        requested_outputs=_decode_requested_outputs(request.get("outputs"), regions is not None),
        binary_data_output=bool(binary_data_output),
    )


def _input_headers(value: Any, limits: InputLimits | None, shm: bool) -> list[_InputHeader]:
    items = _expect_list(value, "the request's 'inputs'")
    if limits is not None:
        limits.check_count(len(items))
    headers: list[_InputHeader] = []
    names: set[str] = set()
    for index, item in enumerate(items):
        header = _input_header(item, index, shm)
        if header.name in names:
            raise V2DecodeError(f"input {header.name!r} is given twice; each input appears once")
        names.add(header.name)
        headers.append(header)
    return headers


# ---- JSON structure -------------------------------------------------------------------------


def _json_length(header_length: int | None, body_length: int) -> int:
    if header_length is None:
        return body_length
    if header_length == 0:
        raise V2DecodeError(
            "Inference-Header-Content-Length 0 (a raw binary request without JSON) is not "
            "supported; send the JSON inference header first and give its length"
        )
    if header_length < 0 or header_length > body_length:
        raise V2DecodeError(
            f"Inference-Header-Content-Length {header_length} exceeds the body's "
            f"{body_length} bytes; it must give the length of the JSON part"
        )
    return header_length


def _load_json(text: bytes, header_length: int | None) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if header_length is None:
            hint = (
                "; if binary tensor data follows the JSON, give the JSON's length in the "
                "Inference-Header-Content-Length header"
            )
        raise V2DecodeError(f"the request's JSON is not valid: {exc}{hint}") from None


def _expect_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise V2DecodeError(f"{what} must be a JSON object, got {json_type_name(value)}")
    return value


def _expect_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise V2DecodeError(f"{what} must be a JSON array, got {json_type_name(value)}")
    return value


def _optional_object(container: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = container.get(key)
    return {} if value is None else _expect_object(value, f"{what}'s {key!r}")


def _optional_str(container: dict[str, Any], key: str, what: str) -> str | None:
    value = container.get(key)
    if value is not None and not isinstance(value, str):
        raise V2DecodeError(f"{what}'s {key!r} must be a string, got {json_type_name(value)}")
    return value


def _optional_bool(container: dict[str, Any], key: str, what: str) -> bool | None:
    value = container.get(key)
    if value is not None and not isinstance(value, bool):
        raise V2DecodeError(f"{what}: {key!r} must be true or false, got {json_type_name(value)}")
    return value


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_unsupported(parameters: dict[str, Any], what: str, shm: bool) -> None:
    for key in _UNSUPPORTED_PARAMETERS:
        if key in parameters and not (shm and key in _SHM_PARAMETERS):
            raise V2DecodeError(f"{what}: parameter {key!r} is not supported by this server")


def _reject_reserved(parameters: dict[str, Any]) -> None:
    for key in parameters:
        if key in _RESERVED_PARAMETERS or key.startswith(_RESERVED_PREFIX):
            raise V2DecodeError(f'Parameter "{key}" is a reserved parameter and cannot be specified.')
    for key in _SEQUENCE_PARAMETERS:
        if parameters.get(key) not in (None, 0, False, ""):
            raise V2DecodeError(
                f"request parameter {key!r}: this server has no sequence batcher; "
                "send each request on its own, without sequence parameters"
            )


def _classification(parameters: dict[str, Any], what: str) -> int | None:
    count = parameters.get("classification")
    if count is not None and (not _is_int(count) or count < 1):
        raise V2DecodeError(f"{what}: classification must be a positive integer (how many top classes), got {count!r}")
    return count


def _region_ref(parameters: dict[str, Any], what: str) -> RegionRef | None:
    name = parameters.get("shared_memory_region")
    if name is None:
        return None
    size, offset = parameters.get("shared_memory_byte_size"), parameters.get("shared_memory_offset", 0)
    if not isinstance(name, str) or not _is_int(size) or not _is_int(offset):
        raise V2DecodeError(
            f"{what}: shared_memory_region must be a string, shared_memory_byte_size and shared_memory_offset integers"
        )
    return RegionRef(name, offset, size)


def _decode_requested_outputs(value: Any, shm: bool = False) -> tuple[RequestedOutput, ...]:
    if value is None:
        return ()
    requested: list[RequestedOutput] = []
    for index, item in enumerate(_expect_list(value, "the request's 'outputs'")):
        output = _expect_object(item, f"outputs[{index}]")
        name = output.get("name")
        if not isinstance(name, str) or not name:
            raise V2DecodeError(f"outputs[{index}].name must be a non-empty string")
        what = f"requested output {name!r}"
        parameters = _optional_object(output, "parameters", what)
        _reject_unsupported(parameters, what, shm)
        if any(earlier.name == name for earlier in requested):
            raise V2DecodeError(f"{what} is requested twice; name each output once")
        binary_data = _optional_bool(parameters, "binary_data", what)
        rest = {key: parameters[key] for key in parameters if key not in _OUTPUT_SERVER_PARAMETERS}
        classification = _classification(parameters, what)
        requested.append(RequestedOutput(name, binary_data, classification, rest, _region_ref(parameters, what)))
    return tuple(requested)


# ---- one input ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _InputHeader:
    """One input as its JSON describes it, before its data is decoded."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    binary_size: int | None
    data: Any
    region: RegionRef | None = None


def _input_header(item: Any, index: int, shm: bool = False) -> _InputHeader:
    spec = _expect_object(item, f"inputs[{index}]")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise V2DecodeError(f"inputs[{index}].name must be a non-empty string")
    what = f"input {name!r}"
    datatype = _input_datatype(spec.get("datatype"), what)
    shape = _input_shape(spec.get("shape"), what)
    parameters = _optional_object(spec, "parameters", what)
    _reject_unsupported(parameters, what, shm)
    region = _region_ref(parameters, what)
    if region is not None:
        if "data" in spec or "binary_data_size" in parameters:
            raise V2DecodeError(f"{what} names a shared-memory region and also carries data; give one of them")
        return _InputHeader(name, datatype, shape, None, None, region)
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None and "data" in spec:
        raise V2DecodeError(f"{what} has both 'data' and binary_data_size; give one of them")
    if binary_size is None and "data" not in spec:
        raise V2DecodeError(f"{what} has neither 'data' nor parameters.binary_data_size")
    if binary_size is not None and (not _is_int(binary_size) or binary_size < 0):
        raise V2DecodeError(f"{what}: binary_data_size must be a non-negative integer")
    return _InputHeader(name, datatype, shape, binary_size, spec.get("data"))


def _decode_data(header: _InputHeader, reader: _BinaryReader, regions: SharedMemory | None) -> np.ndarray:
    what = f"input {header.name!r}"
    try:
        if header.region is not None and regions is not None:
            return regions.tensor(header.region, header.datatype, header.shape, what)
        if header.binary_size is None:
            return _array_from_json_rows(header.data, header.datatype, header.shape)
        return array_from_binary(reader.take(header.binary_size, what), header.datatype, header.shape)
    except TensorDataError as exc:
        raise V2DecodeError(f"{what}: {exc}") from None


def _array_from_json_rows(data: Any, datatype: Datatype, shape: tuple[int, ...]) -> np.ndarray:
    """array_from_json in slices of rows, each holding the GIL briefly, so the event loop gets it
    back between them while a large body decodes on the decode thread."""
    count = math.prod(shape)
    if datatype.is_bytes or not isinstance(data, list) or count <= _ELEMENTS_PER_SLICE:
        return array_from_json(data, datatype, shape)
    nested = bool(data) and isinstance(data[0], list)
    if len(data) != (shape[0] if nested else count):
        form = f"nested as {len(data)} rows" if nested else f"{len(data)} elements"
        raise TensorDataError(f"shape {shape_text(shape)} has {count} elements but data has {form}")
    row_size = count // shape[0]
    step = max(1, _ELEMENTS_PER_SLICE // row_size)
    array = np.empty(shape, datatype.numpy_dtype)
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        rows = data[start:stop] if nested else data[start * row_size : stop * row_size]
        array[start:stop] = array_from_json(rows, datatype, (stop - start, *shape[1:]))
    return array


def _input_datatype(value: Any, what: str) -> Datatype:
    if not isinstance(value, str):
        raise V2DecodeError(f"{what}: datatype must be a string such as 'FP32', got {json_type_name(value)}")
    if value not in DATATYPES:
        raise V2DecodeError(f"{what}: datatype must be one of {', '.join(DATATYPES)}, got {value!r}")
    return DATATYPES[value]


def _input_shape(value: Any, what: str) -> tuple[int, ...]:
    dims = _expect_list(value, f"{what}: shape")
    if len(dims) > MAX_DIMS or not all(_is_int(dim) and dim >= 0 for dim in dims):
        raise V2DecodeError(
            f"{what}: shape must be a list of at most {MAX_DIMS} non-negative integers, got {_short(value)}"
        )
    if math.prod(max(dim, 1) for dim in dims) > _MAX_SHAPE_SPAN:
        raise V2DecodeError(f"{what}: shape {_short(value)} is too large")
    return tuple(dims)


def _short(dims: list[Any]) -> str:
    # repr of a deeply nested list would recurse as deep as the JSON went; only flat ones are shown.
    if any(isinstance(dim, (list, dict)) for dim in dims):
        return "an array holding arrays or objects"
    text = repr(dims[: MAX_DIMS + 1])
    return text if len(text) <= 80 else text[:77] + "..."


# ---- binary tensor data ---------------------------------------------------------------------


class _BinaryReader:
    """Hands out the bytes after the JSON part to binary inputs, in order, checking every size."""

    def __init__(self, view: memoryview, offset: int, has_header: bool) -> None:
        self._view = view
        self._offset = offset
        self._has_header = has_header

    def take(self, size: int, what: str) -> memoryview:
        if not self._has_header:
            raise V2DecodeError(
                f"{what} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header giving the JSON part's length"
            )
        remaining = len(self._view) - self._offset
        if size > remaining:
            raise V2DecodeError(f"{what}: binary_data_size {size} exceeds the {remaining} bytes remaining in the body")
        self._offset += size
        return self._view[self._offset - size : self._offset]

    def expect_end(self) -> None:
        left = len(self._view) - self._offset
        if left:
            raise V2DecodeError(
                f"the body has {left} bytes after the JSON and the binary inputs; "
                "Inference-Header-Content-Length and binary_data_size must account for all of it"
            )


# ---- response -------------------------------------------------------------------------------


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: AbstractSet[str] = frozenset(),
    datatypes: Mapping[str, str] | None = None,
    targets: Mapping[str, RegionRef] | None = None,
    regions: SharedMemory | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the Inference-Header-Content-Length value when any output is binary.

    `datatypes` gives an output's v2 datatype where its numpy dtype does not say it (BF16 bits in
    uint16) or should be converted; otherwise the dtype decides.
    """
    unknown = set(binary) - set(outputs)
    if unknown:
        raise V2EncodeError(f"binary outputs {sorted(unknown)} are not among the outputs")
    entries: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for name, array in outputs.items():
        datatype = _output_datatype(name, array, datatypes)
        entry: dict[str, Any] = {"name": name, "datatype": datatype.name, "shape": array.shape}
        try:
            if targets and name in targets and regions is not None:
                entry["parameters"] = _write_region(name, array, datatype, targets[name], regions)
            elif name in binary:
                chunks.append(binary_data(array, datatype))
                entry["parameters"] = {"binary_data_size": memoryview(chunks[-1]).nbytes}
            else:
                entry["data"] = json_data(array, datatype)
        except TensorDataError as exc:
            raise V2EncodeError(f"output {name!r}: {exc}") from None
        entries.append(entry)
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    header["outputs"] = entries
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return text, None
    # One copy of each binary output, straight from its array's buffer.
    return b"".join([text, *chunks]), len(text)


def _write_region(
    name: str, array: np.ndarray, datatype: Datatype, target: RegionRef, regions: SharedMemory
) -> dict[str, Any]:
    """Write the output where the request asked; its entry's parameters say where and how much."""
    data = binary_data(array, datatype)
    regions.write(target, data, f"output {name!r}")
    parameters: dict[str, Any] = {
        "shared_memory_region": target.name,
        "shared_memory_byte_size": memoryview(data).nbytes,
    }
    if target.offset:
        parameters["shared_memory_offset"] = target.offset
    return parameters


def _output_datatype(name: str, array: np.ndarray, datatypes: Mapping[str, str] | None) -> Datatype:
    try:
        if datatypes is None or name not in datatypes:
            return datatype_of_array(array)
        datatype = datatype_named(datatypes[name])
    except KeyError as exc:
        raise V2EncodeError(f"output {name!r}: {exc.args[0]}") from None
    if datatype.name == "BF16" and array.dtype.newbyteorder("=") != np.uint16:
        raise V2EncodeError(f"output {name!r}: BF16 is carried as uint16 bits, got {array.dtype}")
    return datatype


# ---- metadata and configuration -------------------------------------------------------------


TensorSpecLike = TensorLimits  # a named tensor as the config declares it (one protocol for both uses)


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpecLike],
    outputs: Sequence[TensorSpecLike],
) -> dict[str, Any]:
    """`GET /v2/models/{name}`: shapes as declared, batch dim (-1) included."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [_tensor_metadata(spec) for spec in inputs],
        "outputs": [_tensor_metadata(spec) for spec in outputs],
    }


def _tensor_metadata(spec: TensorSpecLike) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": datatype_named(spec.datatype).name,
        "shape": list(spec.shape),
    }


def model_config(
    name: str,
    max_batch_size: int,
    inputs: Sequence[TensorSpecLike],
    outputs: Sequence[TensorSpecLike],
    *,
    platform: str = "pytorch_libtorch",
    backend: str = "pytorch",
    max_queue_delay_us: int | None = None,
    instance_count: int | None = None,
    instance_kind: str = "KIND_CPU",
    formats: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`GET /v2/models/{name}/config`, in the JSON form of Triton's ModelConfig.

    With max_batch_size > 0 the first declared dim is the batch dim and `dims` leaves it out, as
    Triton does; perf_analyzer then sends batches of `-b` rows. `dynamic_batching` appears only when
    `max_queue_delay_us` is given, and `instance_group` only with `instance_count`; an input's
    `format` (FORMAT_NCHW, FORMAT_NHWC) only where `formats` names it.
    """
    config: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "backend": backend,
        "max_batch_size": max_batch_size,
        "input": [_input_config(spec, max_batch_size, formats or {}) for spec in inputs],
        "output": [_tensor_config(spec, max_batch_size) for spec in outputs],
    }
    if max_queue_delay_us is not None:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if instance_count is not None:
        config["instance_group"] = [{"name": name, "kind": instance_kind, "count": instance_count}]
    return config


def _input_config(spec: TensorSpecLike, max_batch_size: int, formats: Mapping[str, str]) -> dict[str, Any]:
    config = _tensor_config(spec, max_batch_size)
    if spec.name in formats:
        config["format"] = formats[spec.name]
    return config


def _tensor_config(spec: TensorSpecLike, max_batch_size: int) -> dict[str, Any]:
    dims = list(spec.shape)[1:] if max_batch_size > 0 else list(spec.shape)
    return {
        "name": spec.name,
        "data_type": datatype_named(spec.datatype).config_type,
        "dims": dims,
    }
