from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from inferd.datatypes import (
    DATATYPES,
    bf16_bits_from_float32,
    datatype_of_array,
    float32_from_bf16_bits,
)
from inferd.protocols.v2_codec import (
    InputLimits,
    RequestedOutput,
    V2DecodeError,
    V2EncodeError,
    decode_infer_request,
    encode_infer_response,
    model_config,
    model_metadata,
    parse_header_length,
)

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the project venv may lack it; the random-body tests then skip
    st = None

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [7, -8, 9]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1], [7, -8, 9]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [7, -8, 9]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [0.0, 1e-3, -7.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -1.5, 3.4e38], [0.0, 1e-30, -7.25]], dtype=np.float32),
    "FP64": np.array([[0.1, -1.5, 1e300], [0.0, 1e-300, -7.25]], dtype=np.float64),
    "BF16": bf16_bits_from_float32(np.array([[1.0, -2.5, 0.15625], [0.0, 3.0e38, -1e-20]])),
    "BYTES": np.array(
        [[b"a", b"", "\u00e9t\u00e9".encode()], [b"x\x00y", b"{}", b"  "]], dtype=object
    ),
}
ALL_DATATYPES = sorted(SAMPLES)
assert set(ALL_DATATYPES) == set(DATATYPES)


# ---- client side, written independently of the codec ------------------------------------------


def json_values(datatype: str, array: np.ndarray) -> list[Any]:
    if datatype == "BYTES":
        return [[item.decode() for item in row] for row in array.tolist()]
    if datatype == "BF16":
        return float32_from_bf16_bits(array).tolist()
    return array.tolist()


def binary_values(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in array.ravel())
    return array.astype(DATATYPES[datatype].numpy_dtype).tobytes()


def dumps(document: Any) -> bytes:
    # The standard library writes integers of any size, which the codec must then refuse.
    return json.dumps(document).encode()


def request_body(header: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int]:
    text = dumps(header)
    return text + b"".join(chunks), len(text)


def one_input(datatype: str, shape: list[int], data: Any, **parameters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "x", "datatype": datatype, "shape": shape}
    if data is not None:
        entry["data"] = data
    if parameters:
        entry["parameters"] = parameters
    return entry


def decode_json(*inputs: dict[str, Any], **fields: Any) -> Any:
    return decode_infer_request(dumps({"inputs": list(inputs), **fields}), None)


@dataclass
class ClientOutput:
    datatype: str
    array: np.ndarray
    entry: dict[str, Any]


def parse_response(
    body: bytes, header_length: int | None
) -> tuple[dict[str, Any], dict[str, ClientOutput]]:
    end = len(body) if header_length is None else header_length
    document = orjson.loads(body[:end])
    offset = end
    outputs = {}
    for entry in document["outputs"]:
        datatype, shape = entry["datatype"], entry["shape"]
        if "parameters" in entry:
            size = entry["parameters"]["binary_data_size"]
            chunk, offset = body[offset : offset + size], offset + size
            array = parse_binary(datatype, chunk, math.prod(shape))
        else:
            array = parse_json(datatype, entry["data"])
        outputs[entry["name"]] = ClientOutput(datatype, array.reshape(shape), entry)
    assert offset == len(body)
    return document, outputs


def parse_binary(datatype: str, chunk: bytes, count: int) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(chunk, DATATYPES[datatype].numpy_dtype)
    items, position = [], 0
    for _ in range(count):
        (length,) = struct.unpack_from("<I", chunk, position)
        items.append(chunk[position + 4 : position + 4 + length])
        position += 4 + length
    return np.array(items + [None], dtype=object)[:-1]


def parse_json(datatype: str, data: list[Any]) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([item.encode() for item in data] + [None], dtype=object)[:-1]
    if datatype == "BF16":
        return bf16_bits_from_float32(np.array(data, dtype=np.float32))
    return np.array(data, dtype=DATATYPES[datatype].numpy_dtype)


def assert_same(actual: np.ndarray, expected: np.ndarray, datatype: str) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == DATATYPES[datatype].numpy_dtype
    assert actual.tolist() == expected.tolist()


# ---- datatypes --------------------------------------------------------------------------------


def test_table_names_numpy_torch_and_config_types() -> None:
    assert DATATYPES["FP32"].numpy_dtype == np.float32
    assert DATATYPES["FP32"].torch_dtype == "float32"
    assert DATATYPES["FP32"].config_type == "TYPE_FP32"
    assert DATATYPES["BF16"].numpy_dtype == np.uint16
    assert DATATYPES["BF16"].torch_dtype == "bfloat16"
    assert DATATYPES["BYTES"].config_type == "TYPE_STRING"
    assert DATATYPES["BYTES"].torch_dtype is None
    assert DATATYPES["BOOL"].itemsize_bytes == 1


def test_array_datatype_follows_numpy_dtype() -> None:
    assert datatype_of_array(np.zeros(2, ">f4")).name == "FP32"
    assert datatype_of_array(np.array(["a"])).name == "BYTES"
    assert datatype_of_array(np.array([b"a"])).name == "BYTES"
    assert datatype_of_array(np.zeros(2, np.uint16)).name == "UINT16"
    with pytest.raises(KeyError, match="complex128"):
        datatype_of_array(np.zeros(2, complex))


def test_bf16_rounds_to_nearest_even_and_keeps_specials() -> None:
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 3.4e38, -np.inf, np.nan], dtype=np.float32)
    bits = bf16_bits_from_float32(values)
    assert bits.dtype == np.uint16
    assert bits[:5].tolist() == [0x3F80, 0x3F80, 0x3F82, 0x7F80, 0xFF80]
    assert np.isnan(float32_from_bf16_bits(bits[5:]))[0]
    assert float32_from_bf16_bits(np.array([0x3FC0], np.uint16)).tolist() == [1.5]


# ---- request decoding: every datatype ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["nested", "flat"])
@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_json_input_round_trips(datatype: str, layout: str) -> None:
    sample = SAMPLES[datatype]
    data = json_values(datatype, sample)
    if layout == "flat":
        data = [item for row in data for item in row]
    request = decode_json(one_input(datatype, [2, 3], data))
    assert_same(request.inputs["x"], sample, datatype)
    assert request.datatypes == {"x": datatype}


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_binary_input_round_trips(datatype: str) -> None:
    sample = SAMPLES[datatype]
    chunk = binary_values(datatype, sample)
    header = {"inputs": [one_input(datatype, [2, 3], None, binary_data_size=len(chunk))]}
    body, header_length = request_body(header, [chunk])
    array = decode_infer_request(body, header_length).inputs["x"]
    assert_same(array, sample, datatype)
    if datatype != "BYTES":
        assert np.shares_memory(array, np.frombuffer(body, np.uint8)), "binary input was copied"


def test_binary_and_json_inputs_mix_in_order() -> None:
    first, second = np.arange(4, dtype=np.uint32), np.array([True, False, True])
    header = {
        "inputs": [
            {
                "name": "a",
                "datatype": "UINT32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 16},
            },
            {"name": "j", "datatype": "INT64", "shape": [1], "data": [5]},
            {"name": "b", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}},
        ]
    }
    body, header_length = request_body(header, [first.tobytes(), second.tobytes()])
    request = decode_infer_request(body, header_length)
    assert list(request.inputs) == ["a", "j", "b"]
    assert request.inputs["a"].tolist() == [[0, 1], [2, 3]]
    assert request.inputs["j"].tolist() == [5]
    assert request.inputs["b"].tolist() == [True, False, True]


def test_binary_input_accepts_a_memoryview_body() -> None:
    chunk = np.arange(3, dtype=np.float32).tobytes()
    body, header_length = request_body(
        {"inputs": [one_input("FP32", [3], None, binary_data_size=12)]}, [chunk]
    )
    assert decode_infer_request(memoryview(body), header_length).inputs["x"].tolist() == [0, 1, 2]


def test_scalar_and_empty_shapes() -> None:
    assert decode_json(one_input("FP32", [], [2.5])).inputs["x"].shape == ()
    empty = decode_json(one_input("INT32", [0, 3], [])).inputs["x"]
    assert empty.shape == (0, 3) and empty.dtype == np.int32
    assert decode_json(one_input("BYTES", [2, 0], [[], []])).inputs["x"].shape == (2, 0)


def test_integers_and_booleans_fill_float_tensors() -> None:
    assert decode_json(one_input("FP32", [3], [1, 2.5, True])).inputs["x"].tolist() == [
        1.0,
        2.5,
        1.0,
    ]
    assert decode_json(one_input("UINT64", [1], [False])).inputs["x"].tolist() == [0]


def test_request_fields() -> None:
    request = decode_json(
        one_input("FP32", [1], [1.0]),
        id="req-7",
        parameters={"binary_data_output": True, "priority": 2},
        outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    )
    assert request.id == "req-7"
    assert request.parameters == {"binary_data_output": True, "priority": 2}
    assert request.binary_data_output is True
    assert request.requested_outputs == (RequestedOutput("a", None), RequestedOutput("b", False))


def test_parameters_for_the_model_leave_out_the_servers_own() -> None:
    request = decode_json(
        one_input("FP32", [1], [1.0]),
        parameters={"binary_data_output": True, "priority": 2, "temperature": 0.5, "sequence_id": 0},
        outputs=[
            {"name": "a", "parameters": {"binary_data": True, "classification": 3}},
            {"name": "b", "parameters": {"top_k": 4, "binary_data": False}},
        ],
    )
    assert request.model_parameters == {"temperature": 0.5}
    assert request.output_parameters == {"b": {"top_k": 4}}
    assert request.requested_outputs[0] == RequestedOutput("a", True, 3)


def test_request_defaults() -> None:
    request = decode_json(one_input("FP32", [1], [1.0]))
    assert request.id is None and request.parameters == {}
    assert request.requested_outputs == () and request.binary_data_output is False


# ---- requested outputs ------------------------------------------------------------------------

PRODUCED = {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32), "c": np.zeros(1, np.int64)}


def test_no_requested_outputs_means_all_outputs_as_json() -> None:
    selected, binary = decode_json(one_input("FP32", [1], [1.0])).select_outputs(PRODUCED)
    assert list(selected) == ["a", "b", "c"] and binary == set()


def test_binary_data_output_makes_every_output_binary() -> None:
    request = decode_json(one_input("FP32", [1], [1.0]), parameters={"binary_data_output": True})
    assert request.select_outputs(PRODUCED)[1] == {"a", "b", "c"}


def test_output_binary_data_overrides_the_request_flag() -> None:
    request = decode_json(
        one_input("FP32", [1], [1.0]),
        parameters={"binary_data_output": True},
        outputs=[{"name": "c"}, {"name": "a", "parameters": {"binary_data": False}}],
    )
    selected, binary = request.select_outputs(PRODUCED)
    assert list(selected) == ["c", "a"] and binary == {"c"}


def test_requesting_an_unknown_output_names_the_known_ones() -> None:
    request = decode_json(one_input("FP32", [1], [1.0]), outputs=[{"name": "zz"}])
    with pytest.raises(
        V2DecodeError, match="requested output 'zz' is not an output.*'a', 'b', 'c'"
    ):
        request.select_outputs(PRODUCED)


def test_requested_outputs_are_checked_before_computing() -> None:
    request = decode_json(one_input("FP32", [1], [1.0]), outputs=[{"name": "b"}])
    request.check_requested_outputs(["a", "b"])
    with pytest.raises(V2DecodeError, match="requested output 'b' is not an output"):
        request.check_requested_outputs(["a"])


# ---- request errors ---------------------------------------------------------------------------


DEEP_JSON = b"[" * 1000 + b"1" + b"]" * 1000  # orjson's limit is 1,024 levels in all


def deep(levels: int) -> Any:
    value: Any = [1.0]
    for _ in range(levels):
        value = [value]
    return value


JSON_ERRORS = [
    pytest.param([], "request body must be a JSON object, got an array", id="array-body"),
    pytest.param("x", "request body must be a JSON object, got a string", id="string-body"),
    pytest.param({}, "'inputs' must be a JSON array, got null", id="no-inputs"),
    pytest.param(
        {"inputs": {}}, "'inputs' must be a JSON array, got an object", id="inputs-object"
    ),
    pytest.param(
        {"inputs": [3]}, r"inputs\[0\] must be a JSON object, got a number", id="input-number"
    ),
    pytest.param(
        {"inputs": [{"shape": [1]}]}, r"inputs\[0\].name must be a non-empty string", id="no-name"
    ),
    pytest.param({"inputs": [{"name": 5}]}, r"inputs\[0\].name must be", id="name-number"),
    pytest.param({"id": 5, "inputs": []}, "'id' must be a string, got a number", id="id-number"),
    pytest.param(
        {"parameters": [], "inputs": []}, "'parameters' must be a JSON object", id="params-array"
    ),
    pytest.param(
        {"parameters": {"binary_data_output": 1}, "inputs": []},
        "'binary_data_output' must be true or false, got a number",
        id="binary-data-output-number",
    ),
    pytest.param(
        {"inputs": [], "outputs": {}}, "'outputs' must be a JSON array", id="outputs-object"
    ),
    pytest.param(
        {"inputs": [], "outputs": [{}]}, r"outputs\[0\].name must be", id="output-no-name"
    ),
    pytest.param(
        {"inputs": [], "outputs": ["y"]}, r"outputs\[0\] must be a JSON object", id="output-string"
    ),
    pytest.param(
        {"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
        "requested output 'y': 'binary_data' must be true or false, got a string",
        id="binary-data-string",
    ),
    pytest.param(
        {"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 0}}]},
        "requested output 'y': classification must be a positive integer",
        id="classification-zero",
    ),
    pytest.param(
        {"inputs": [], "parameters": {"headers": {"a": "b"}}},
        'Parameter "headers" is a reserved parameter and cannot be specified.',
        id="reserved-headers",
    ),
    pytest.param(
        {"inputs": [], "parameters": {"triton_enable_empty_final_response": True}},
        'Parameter "triton_enable_empty_final_response" is a reserved parameter',
        id="reserved-prefix",
    ),
    pytest.param(
        {"inputs": [], "parameters": {"sequence_id": 7}},
        "request parameter 'sequence_id': this server has no sequence batcher",
        id="sequence-id",
    ),
    pytest.param(
        {"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]},
        "requested output 'y' is requested twice",
        id="output-twice",
    ),
    pytest.param(
        {"inputs": [one_input("FP32", [1], [1.0]), one_input("FP32", [1], [1.0])]},
        "input 'x' is given twice",
        id="input-twice",
    ),
]

INPUT_ERRORS = [
    pytest.param(
        one_input("FP8", [1], [1]),
        "datatype must be one of BOOL, .*, got 'FP8'",
        id="unknown-datatype",
    ),
    pytest.param(
        one_input(32, [1], [1]),
        "datatype must be a string such as 'FP32', got a number",
        id="datatype-number",
    ),
    pytest.param(
        {"name": "x", "shape": [1], "data": [1]}, "datatype must be a string", id="no-datatype"
    ),
    pytest.param(
        {"name": "x", "datatype": "FP32", "data": [1]},
        "shape must be a JSON array, got null",
        id="no-shape",
    ),
    pytest.param(
        one_input("FP32", [2, -1], [1, 2]),
        r"shape must be a list of at most 64 non-negative integers, got \[2, -1\]",
        id="negative-dim",
    ),
    pytest.param(one_input("FP32", [2.0], [1, 2]), "non-negative integers", id="float-dim"),
    pytest.param(one_input("FP32", [True], [1]), "non-negative integers", id="bool-dim"),
    pytest.param(one_input("FP32", [1] * 65, [1]), "at most 64", id="too-many-dims"),
    pytest.param(one_input("FP32", [0, 2**40, 2**40], []), "is too large", id="huge-empty-shape"),
    pytest.param(
        one_input("FP32", [1], None),
        "has neither 'data' nor parameters.binary_data_size",
        id="no-data",
    ),
    pytest.param(
        one_input("FP32", [1], [1.0], binary_data_size=4),
        "has both 'data' and binary_data_size",
        id="both",
    ),
    pytest.param(
        one_input("FP32", [1], "1.0"), "data must be a JSON array, got a string", id="data-string"
    ),
    pytest.param(
        one_input("FP32", [1], None, shared_memory_region="r"),
        "'shared_memory_region' is not supported",
        id="shm",
    ),
    pytest.param(
        one_input("FP32", [2, 3], [1, 2, 3, 4, 5]),
        r"input 'x': shape \[2, 3\] has 6 elements but data has 5",
        id="count",
    ),
    pytest.param(
        one_input("FP32", [4], [[1, 2], [3, 4]]),
        r"nested as \[2, 2\] but shape is \[4\]",
        id="nested-mismatch",
    ),
    pytest.param(one_input("FP32", [3], [[1, 2], [3]]), "not a regular array", id="ragged"),
    pytest.param(one_input("FP32", [2], [1, [2]]), "not a regular array", id="numbers-and-lists"),
    pytest.param(one_input("FP32", [1], deep(100)), "not a regular array", id="deeper-than-numpy"),
    pytest.param(
        one_input("FP32", [1], ["1.0"]),
        "FP32 data must hold numbers, got strings",
        id="string-in-fp32",
    ),
    pytest.param(
        one_input("FP32", [2], [1.0, None]),
        "FP32 data must hold numbers, got nulls",
        id="null-in-fp32",
    ),
    pytest.param(one_input("FP32", [1], [{"a": 1}]), "must hold numbers", id="object-in-fp32"),
    pytest.param(
        one_input("INT32", [2], [1, 1.5]), "INT32 data must hold integers", id="float-in-int32"
    ),
    pytest.param(
        one_input("INT8", [2], [1, 300]), "300 is outside INT8's range -128..127", id="int8-range"
    ),
    pytest.param(one_input("UINT8", [1], [-1]), "-1 is outside UINT8's range", id="uint8-negative"),
    pytest.param(one_input("INT64", [1], [2**63]), "outside INT64's range", id="int64-range"),
    pytest.param(one_input("UINT64", [1], [2**64]), "must hold integers", id="uint64-overflow"),
    pytest.param(one_input("FP16", [1], [1e6]), "too large for FP16", id="fp16-overflow"),
    pytest.param(one_input("FP32", [1], [1e300]), "too large for FP32", id="fp32-overflow"),
    pytest.param(one_input("BF16", [1], [1e300]), "too large for BF16", id="bf16-overflow"),
    pytest.param(
        one_input("BOOL", [2], [1, 0]),
        "BOOL data must hold true/false, got numbers",
        id="ints-in-bool",
    ),
    pytest.param(
        one_input("BYTES", [2], ["a", 1]),
        "BYTES data must hold strings, got a number",
        id="number-in-bytes",
    ),
    pytest.param(one_input("BYTES", [2], [["a"], "b"]), "not a regular array", id="ragged-bytes"),
    pytest.param(
        one_input("BYTES", [3], [["a"], ["b", "c"]]), "not a regular array", id="ragged-bytes-rows"
    ),
]


@pytest.mark.parametrize(("document", "message"), JSON_ERRORS)
def test_malformed_request_json_is_named(document: Any, message: str) -> None:
    with pytest.raises(V2DecodeError, match=message):
        decode_infer_request(dumps(document), None)


@pytest.mark.parametrize(("entry", "message"), INPUT_ERRORS)
def test_malformed_input_is_named(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(V2DecodeError, match=message):
        decode_json(entry)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", b"[1]", DEEP_JSON, "not a regular array"),
        ("BYTES", b"[1]", DEEP_JSON, "must hold strings"),
        ("FP32", DEEP_JSON, b"[1]", "shape must be .* got an array holding arrays"),
    ],
    ids=["numbers", "bytes", "shape"],
)
def test_nesting_as_deep_as_json_allows_is_named(
    datatype: str, shape: bytes, data: bytes, message: str
) -> None:
    entry = b'{"name": "x", "datatype": "%s", "shape": %s, "data": %s}' % (
        datatype.encode(),
        shape,
        data,
    )
    with pytest.raises(V2DecodeError, match=message):
        decode_infer_request(b'{"inputs": [%s]}' % entry, None)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe", b"NaN", b"[" * 2000 + b"]" * 2000],
    ids=["empty", "open", "utf8", "nan", "deep"],
)
def test_invalid_json_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(V2DecodeError):
        decode_infer_request(body, None)


def binary_request(
    size: int, chunk: bytes, datatype: str = "FP32", shape: list[int] | None = None
) -> tuple[bytes, int]:
    entry = one_input(datatype, shape if shape is not None else [1], None, binary_data_size=size)
    return request_body({"inputs": [entry]}, [chunk])


BINARY_ERRORS = [
    pytest.param(
        binary_request(4096, bytes(100)),
        "binary_data_size 4096 exceeds the 100 bytes remaining in the body",
        id="size-exceeds-body",
    ),
    pytest.param(binary_request(2**62, bytes(8)), "exceeds the 8 bytes remaining", id="huge-size"),
    pytest.param(
        binary_request(8, bytes(8)),
        r"binary_data_size is 8 but shape \[1\] of FP32 needs 4 bytes",
        id="size-vs-shape",
    ),
    pytest.param(
        binary_request(4, bytes(6)),
        "the body has 2 bytes after the JSON and the binary inputs",
        id="trailing-bytes",
    ),
    pytest.param(
        binary_request(-4, bytes(4)),
        "binary_data_size must be a non-negative integer",
        id="negative-size",
    ),
    pytest.param(
        binary_request("4", bytes(4)),
        "binary_data_size must be a non-negative integer",
        id="string-size",
    ),
    pytest.param(
        binary_request(4, bytes(4), "BYTES", [2]),
        "2 BYTES elements need at least 8 bytes",
        id="bytes-too-short",
    ),
    pytest.param(
        binary_request(9, struct.pack("<I", 1) + b"a" + struct.pack("<I", 9), "BYTES", [2]),
        "element 1 declares 9 bytes but only 0 remain",
        id="bytes-overrun",
    ),
    pytest.param(
        binary_request(7, struct.pack("<I", 1) + b"abc", "BYTES", [1]),
        "2 bytes are left over after its 1 BYTES elements",
        id="bytes-leftover",
    ),
    pytest.param(
        binary_request(11, struct.pack("<I", 5) + b"abcdexy", "BYTES", [2]),
        "element 1 has no 4-byte length prefix",
        id="bytes-no-prefix",
    ),
]


@pytest.mark.parametrize(("request_parts", "message"), BINARY_ERRORS)
def test_malformed_binary_data_is_named(request_parts: tuple[bytes, int], message: str) -> None:
    with pytest.raises(V2DecodeError, match=message):
        decode_infer_request(*request_parts)


def test_binary_input_without_the_header_is_named() -> None:
    body, header_length = binary_request(4, bytes(4))
    with pytest.raises(V2DecodeError, match="no Inference-Header-Content-Length header"):
        decode_infer_request(body[:header_length], None)
    with pytest.raises(
        V2DecodeError, match="binary tensor data follows.*Inference-Header-Content-Length"
    ):
        decode_infer_request(body, None)


@pytest.mark.parametrize(
    ("header_length", "message"),
    [
        (500, "Inference-Header-Content-Length 500 exceeds the body's"),
        (-1, "exceeds"),
        (0, "raw binary request"),
    ],
)
def test_bad_header_length_is_named(header_length: int, message: str) -> None:
    body, _ = binary_request(4, bytes(4))
    with pytest.raises(V2DecodeError, match=message):
        decode_infer_request(body, header_length)


def test_header_length_parsing() -> None:
    assert parse_header_length(None) is None
    assert parse_header_length(" 120 ") == 120
    for value in ["-3", "abc", "1.5", "", "\u0661"]:
        with pytest.raises(V2DecodeError, match="must be a non-negative integer"):
            parse_header_length(value)


# ---- response encoding ------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_output_round_trips(datatype: str, binary: bool) -> None:
    sample = SAMPLES[datatype]
    body, header_length = encode_infer_response(
        "m", "1", None, {"y": sample}, {"y"} if binary else set(), datatypes={"y": datatype}
    )
    assert (header_length is not None) == binary
    _, outputs = parse_response(body, header_length)
    assert outputs["y"].datatype == datatype
    assert_same(outputs["y"].array, sample, datatype)


@pytest.mark.parametrize("datatype", sorted(set(ALL_DATATYPES) - {"BF16"}))
def test_output_datatype_comes_from_the_array(datatype: str) -> None:
    body, _ = encode_infer_response("m", "1", None, {"y": SAMPLES[datatype]})
    assert orjson.loads(body)["outputs"][0]["datatype"] == datatype


def test_response_shape_and_fields() -> None:
    outputs = {"j": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.int64)}
    body, header_length = encode_infer_response("tiny", "2", "req-1", outputs, {"b"})
    document, parsed = parse_response(body, header_length)
    assert document["model_name"] == "tiny" and document["model_version"] == "2"
    assert document["id"] == "req-1"
    assert "parameters" not in parsed["j"].entry, "perf_analyzer rejects other output parameters"
    assert parsed["j"].entry["data"] == [0, 1, 2, 3, 4, 5] and parsed["j"].entry["shape"] == [2, 3]
    assert parsed["b"].entry["parameters"] == {"binary_data_size": 24}
    assert "data" not in parsed["b"].entry


def test_response_without_binary_has_no_header_and_no_id() -> None:
    body, header_length = encode_infer_response("m", "1", None, {"y": np.zeros(2, np.float32)})
    assert header_length is None
    assert "id" not in orjson.loads(body)


def test_float32_output_keeps_its_short_form() -> None:
    body, _ = encode_infer_response("m", "1", None, {"y": np.array([0.1], np.float32)})
    assert b'"data":[0.1]' in body


def test_non_contiguous_and_big_endian_outputs() -> None:
    strided = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    big_endian = np.arange(3, dtype=">i4")
    outputs = {"s": strided, "e": big_endian}
    for binary in (set(), {"s", "e"}):
        _, parsed = parse_response(*encode_infer_response("m", "1", None, outputs, binary))
        assert parsed["s"].array.tolist() == strided.tolist()
        assert parsed["e"].array.tolist() == [0, 1, 2]


def test_string_outputs_are_bytes() -> None:
    body, header_length = encode_infer_response(
        "m", "1", None, {"t": np.array(["h\u00e9", "x"])}, {"t"}
    )
    _, parsed = parse_response(body, header_length)
    assert parsed["t"].datatype == "BYTES" and parsed["t"].array.tolist() == [
        "h\u00e9".encode(),
        b"x",
    ]


def test_non_utf8_bytes_cannot_go_in_json() -> None:
    with pytest.raises(V2EncodeError, match="output 'y': BYTES that are not UTF-8"):
        encode_infer_response("m", "1", None, {"y": np.array([b"\xff"], dtype=object)})
    body, header_length = encode_infer_response(
        "m", "1", None, {"y": np.array([b"\xff"], dtype=object)}, {"y"}
    )
    assert parse_response(body, header_length)[1]["y"].array.tolist() == [b"\xff"]


def test_bytes_outputs_hold_only_bytes_or_text() -> None:
    for binary in (set(), {"y"}):
        with pytest.raises(V2EncodeError, match="BYTES elements must be bytes or str, got int"):
            encode_infer_response("m", "1", None, {"y": np.array([b"a", 5], dtype=object)}, binary)


def test_named_datatype_converts_the_values() -> None:
    outputs = {"y": np.array([1, 0, 2])}
    for binary in (set(), {"y"}):
        body, header_length = encode_infer_response(
            "m", "1", None, outputs, binary, datatypes={"y": "FP32"}
        )
        parsed = parse_response(body, header_length)[1]["y"]
        assert parsed.datatype == "FP32" and parsed.array.tolist() == [1.0, 0.0, 2.0]


def test_encode_errors_are_named() -> None:
    with pytest.raises(
        V2EncodeError, match="output 'y': numpy dtype complex128 has no v2 datatype"
    ):
        encode_infer_response("m", "1", None, {"y": np.zeros(1, complex)})
    with pytest.raises(V2EncodeError, match="BF16 is carried as uint16 bits, got float32"):
        encode_infer_response(
            "m", "1", None, {"y": np.zeros(1, np.float32)}, datatypes={"y": "BF16"}
        )
    with pytest.raises(V2EncodeError, match="binary outputs \\['z'\\] are not among the outputs"):
        encode_infer_response("m", "1", None, {"y": np.zeros(1)}, {"z"})


# ---- metadata and configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    datatype: str
    shape: tuple[int, ...]


INPUTS = [Spec("input", "FP32", (-1, 16)), Spec("mask", "BOOL", (-1, 16))]
OUTPUTS = [Spec("logits", "FP32", (-1, 10))]


def test_model_metadata_keeps_the_batch_dim() -> None:
    assert model_metadata("tiny", ["1"], "pytorch_libtorch", INPUTS, OUTPUTS) == {
        "name": "tiny",
        "versions": ["1"],
        "platform": "pytorch_libtorch",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, 16]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1, 16]},
        ],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }


def test_model_config_drops_the_batch_dim_when_batching() -> None:
    config = model_config("tiny", 8, INPUTS, OUTPUTS, max_queue_delay_us=500, instance_count=2)
    assert config["name"] == "tiny" and config["max_batch_size"] == 8
    assert config["platform"] == "pytorch_libtorch" and config["backend"] == "pytorch"
    assert config["input"][0] == {"name": "input", "data_type": "TYPE_FP32", "dims": [16]}
    assert config["input"][1]["data_type"] == "TYPE_BOOL"
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 500}
    assert config["instance_group"] == [{"name": "tiny", "kind": "KIND_CPU", "count": 2}]
    orjson.dumps(config)


def test_model_config_without_batching_keeps_every_dim() -> None:
    config = model_config("tiny", 0, INPUTS, OUTPUTS)
    assert config["input"][0]["dims"] == [-1, 16]
    assert "dynamic_batching" not in config and "instance_group" not in config


def test_metadata_rejects_unknown_datatypes() -> None:
    with pytest.raises(KeyError, match="'FP8' is not one of"):
        model_metadata("m", ["1"], "p", [Spec("x", "FP8", (1,))], [])


# ---- random bodies ----------------------------------------------------------------------------


def check_decoded(body: bytes, header_length: int | None) -> None:
    try:
        request = decode_infer_request(body, header_length)
    except V2DecodeError:
        return
    for name, array in request.inputs.items():
        assert array.dtype == DATATYPES[request.datatypes[name]].numpy_dtype


if st is None:

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_random_bodies_raise_only_decode_errors() -> None: ...

else:
    # orjson refuses lone surrogates, so texts leave them out to reach deeper into the codec.
    texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=4)
    json_scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | texts
    )
    json_values_strategy = st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=20,
    )
    dims = st.integers(min_value=-2, max_value=4) | st.sampled_from([2**40, 2**63, 1.0, True, "2"])
    datatypes = st.sampled_from([*DATATYPES, "FP8", 7, None])
    numbers = (
        st.integers(min_value=-(2**65), max_value=2**65)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.booleans()
    )
    tensor_data = st.recursive(
        st.lists(numbers | texts, max_size=6),
        lambda inner: st.lists(inner, max_size=3),
        max_leaves=24,
    )
    parameters = st.fixed_dictionaries(
        {},
        optional={
            "binary_data_size": st.integers(min_value=-2, max_value=40) | json_scalars,
            "binary_data": json_values_strategy,
        },
    )
    input_entries = st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["x", "y", ""]) | json_scalars,
            "datatype": datatypes,
            "shape": st.lists(dims, max_size=4) | json_values_strategy,
            "data": tensor_data | json_values_strategy,
            "parameters": parameters | json_values_strategy,
        },
    )
    requests = st.fixed_dictionaries(
        {},
        optional={
            "id": json_scalars,
            "inputs": st.lists(input_entries | json_values_strategy, max_size=3)
            | json_values_strategy,
            "outputs": st.lists(
                st.fixed_dictionaries({"name": texts, "parameters": parameters}), max_size=2
            )
            | json_values_strategy,
            "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": json_scalars})
            | json_values_strategy,
        },
    )

    @st.composite
    def near_valid_tensors(draw: Any) -> tuple[bytes, int | None]:
        """One input that is right in all but its data: counts, types and sizes slightly off."""
        datatype = draw(st.sampled_from(list(DATATYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        count = math.prod(shape)
        entry: dict[str, Any] = {"name": "x", "datatype": datatype, "shape": shape}
        if draw(st.booleans()):
            element = draw(st.sampled_from([numbers, texts, st.booleans(), st.integers(0, 255)]))
            flat = draw(st.lists(element, min_size=max(count - 1, 0), max_size=count + 1))
            nested = len(flat) == count and draw(st.booleans())
            entry["data"] = (
                np.array(flat + [None], dtype=object)[:-1].reshape(shape).tolist()
                if nested
                else flat
            )
            return dumps({"inputs": [entry]}), None
        tail = draw(st.binary(max_size=40))
        itemsize = DATATYPES[datatype].itemsize_bytes or 4
        entry["parameters"] = {
            "binary_data_size": draw(
                st.sampled_from([len(tail), len(tail) - 1, len(tail) + 1, count * itemsize])
            )
        }
        text = dumps({"inputs": [entry]})
        return text + tail, len(text)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        requests,
        st.binary(max_size=48),
        st.sampled_from(["exact", "none", "random"]),
        st.integers(-5, 200),
    )
    def test_random_requests_raise_only_decode_errors(
        document: Any, tail: bytes, header_mode: str, shift: int
    ) -> None:
        text = dumps(document)
        header_length = {"exact": len(text), "none": None, "random": len(text) + shift}[header_mode]
        check_decoded(text + tail, header_length)

    @settings(max_examples=400, deadline=None)
    @given(near_valid_tensors())
    def test_near_valid_tensors_raise_only_decode_errors(
        request_parts: tuple[bytes, int | None],
    ) -> None:
        check_decoded(*request_parts)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200), st.none() | st.integers(-5, 250))
    def test_random_bodies_raise_only_decode_errors(body: bytes, header_length: int | None) -> None:
        check_decoded(body, header_length)


# ---- limits: checked from the JSON header before any tensor data is decoded ----------------------


@dataclass(frozen=True)
class Spec:
    name: str
    datatype: str
    shape: tuple[int, ...]


TINY = InputLimits(4, [Spec("input", "FP32", (-1, 16))])
HANDLER = InputLimits(4, None)


def _binary_request(entry: dict[str, Any], tail: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [entry]}).encode()
    return header + tail, len(header)


def test_datatype_is_checked_before_bytes_are_split() -> None:
    """The BYTES data is malformed too: the datatype error shows it was never read."""
    entry = {"name": "input", "datatype": "BYTES", "shape": [1, 16], "parameters": {"binary_data_size": 3}}
    with pytest.raises(V2DecodeError, match="datatype BYTES but the model takes FP32"):
        decode_infer_request(*_binary_request(entry, b"\xff\xff\xff"), TINY)


@pytest.mark.parametrize(
    "shape, message",
    [
        ([5, 16], "carries 5 items but the model takes at most 4"),
        ([2, 15], r"shape \[2, 15\] does not match \[-1, 16\]"),
        ([2], r"shape \[2\] does not match"),
        ([0, 16], "at least one row"),
        ([], "at least one row"),
    ],
)
def test_shape_and_batch_are_checked_before_data(shape: list[int], message: str) -> None:
    entry = {"name": "input", "datatype": "FP32", "shape": shape, "data": "not even a list"}
    with pytest.raises(V2DecodeError, match=message):
        decode_infer_request(orjson.dumps({"inputs": [entry]}), None, TINY)


def test_names_are_checked_before_data() -> None:
    entry = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": "not even a list"}
    with pytest.raises(V2DecodeError, match=r"takes inputs \['input'\]; the request gave \['x'\]"):
        decode_infer_request(orjson.dumps({"inputs": [entry]}), None, TINY)


def test_the_count_of_inputs_is_checked_before_any_input() -> None:
    entries = [{"nonsense": i} for i in range(1000)]
    with pytest.raises(V2DecodeError, match="gives 1000 inputs; this model takes 1"):
        decode_infer_request(orjson.dumps({"inputs": entries}), None, TINY)


def test_handler_items_are_counted_before_bytes_are_split() -> None:
    count = 100_000
    entry = {"name": "text", "datatype": "BYTES", "shape": [count], "parameters": {"binary_data_size": 4 * count}}
    with pytest.raises(V2DecodeError, match=f"carries {count} items but the model takes at most 4"):
        decode_infer_request(*_binary_request(entry, b"\0" * 4 * count), HANDLER)
    with pytest.raises(V2DecodeError, match="gives 2 inputs; this model takes 1"):
        decode_infer_request(orjson.dumps({"inputs": [{**entry, "name": "a"}, {**entry, "name": "b"}]}), None, HANDLER)


def test_a_request_within_limits_decodes() -> None:
    entry = {"name": "input", "datatype": "FP32", "shape": [2, 16], "data": [0.5] * 32}
    decoded = decode_infer_request(orjson.dumps({"inputs": [entry]}), None, TINY)
    assert decoded.inputs["input"].shape == (2, 16)


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BF16", "BOOL"])
def test_large_json_data_decodes_in_slices_as_it_would_whole(nested: bool, datatype: str) -> None:
    rows, width = 700, 300  # 210,000 elements: several slices of rows
    values = np.arange(rows * width).reshape(rows, width) % 7
    data = (values > 3).tolist() if datatype == "BOOL" else values.tolist()
    entry = {"name": "x", "datatype": datatype, "shape": [rows, width], "data": data if nested else sum(data, [])}
    decoded = decode_infer_request(orjson.dumps({"inputs": [entry]}), None).inputs["x"]
    expected = parse_json(datatype, data)
    assert decoded.shape == (rows, width) and decoded.dtype == expected.dtype
    assert np.array_equal(decoded, expected.reshape(rows, width))


@pytest.mark.parametrize(
    "data, message",
    [
        ([0.5] * 100_000, "has 210000 elements but data has 100000 elements"),
        ([[0.5] * 300] * 10, "has 210000 elements but data has nested as 10 rows"),
    ],
)
def test_large_json_data_of_the_wrong_length_is_named_without_converting(data: list[Any], message: str) -> None:
    entry = {"name": "x", "datatype": "FP32", "shape": [700, 300], "data": data}
    with pytest.raises(V2DecodeError, match=message):
        decode_infer_request(orjson.dumps({"inputs": [entry]}), None)


def test_ragged_rows_in_a_later_slice_are_named() -> None:
    data = [[0.5] * 300] * 699 + [[0.5] * 299]
    entry = {"name": "x", "datatype": "FP32", "shape": [700, 300], "data": data}
    with pytest.raises(V2DecodeError, match="input 'x'"):
        decode_infer_request(orjson.dumps({"inputs": [entry]}), None)


def test_header_length_of_thousands_of_digits_is_named() -> None:
    with pytest.raises(V2DecodeError, match="has 5000 digits"):
        parse_header_length("9" * 5000)
