"""Tensor datatypes of the Open Inference Protocol (KServe v2): the table, and tensor data in each form.

Each v2 datatype names the numpy dtype that carries it in the main process, the torch dtype a worker
turns it into (as a string, because the main process never imports torch), the `TYPE_*` name of
Triton's model configuration, and its size in the binary tensor form.

Two datatypes have no plain numpy counterpart:
- BF16 travels as `uint16` holding the raw bfloat16 bits. A worker makes it a `torch.bfloat16` tensor
  with `torch.from_numpy(bits).view(torch.bfloat16)`, and goes back with `.view(torch.uint16)` (or
  `.view(torch.int16)`). JSON carries BF16 as numbers, converted here through float32.
- BYTES travels as a numpy object array of `bytes`; it has no torch dtype.

Tensor data comes as a JSON array (flat, or nested as the shape says) or as binary: little-endian,
row-major, unpadded; BOOL one byte; each BYTES element a 4-byte little-endian length and the bytes.
The functions here turn either form into a numpy array and back. They know nothing of requests:
a TensorDataError says what is wrong with the data and the caller says which tensor it was.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.segments import shared_bytes

MAX_DIMS = 64  # numpy's limit on array rank
_LENGTH_PREFIX = struct.Struct("<I")


class TensorDataError(ValueError):
    """Tensor data does not fit its datatype or shape; the message does not name the tensor."""


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str
    numpy_dtype: np.dtype  # little-endian, as the binary form is
    torch_dtype: str | None  # attribute name on the torch module; None for BYTES
    config_type: str  # Triton model configuration's data_type
    itemsize_bytes: int | None  # None: variable length (BYTES)

    @property
    def is_bytes(self) -> bool:
        return self.itemsize_bytes is None


def _fixed(name: str, numpy_name: str, torch_name: str, config_type: str) -> Datatype:
    dtype = np.dtype(numpy_name).newbyteorder("<")
    return Datatype(name, dtype, torch_name, config_type, dtype.itemsize)


DATATYPES: dict[str, Datatype] = {
    datatype.name: datatype
    for datatype in (
        _fixed("BOOL", "bool", "bool", "TYPE_BOOL"),
        _fixed("UINT8", "uint8", "uint8", "TYPE_UINT8"),
        _fixed("UINT16", "uint16", "uint16", "TYPE_UINT16"),
        _fixed("UINT32", "uint32", "uint32", "TYPE_UINT32"),
        _fixed("UINT64", "uint64", "uint64", "TYPE_UINT64"),
        _fixed("INT8", "int8", "int8", "TYPE_INT8"),
        _fixed("INT16", "int16", "int16", "TYPE_INT16"),
        _fixed("INT32", "int32", "int32", "TYPE_INT32"),
        _fixed("INT64", "int64", "int64", "TYPE_INT64"),
        _fixed("FP16", "float16", "float16", "TYPE_FP16"),
        _fixed("FP32", "float32", "float32", "TYPE_FP32"),
        _fixed("FP64", "float64", "float64", "TYPE_FP64"),
        _fixed("BF16", "uint16", "bfloat16", "TYPE_BF16"),
        Datatype("BYTES", np.dtype(object), None, "TYPE_STRING", None),
    )
}

# numpy dtype -> v2 name when an array has to say what it is. uint16 means UINT16: a BF16 array
# cannot be told from its bits, so whoever holds one names its datatype explicitly.
_BY_NUMPY: dict[np.dtype, str] = {
    np.dtype(datatype.numpy_dtype.name): datatype.name for datatype in DATATYPES.values() if datatype.name != "BF16"
}


def datatype_named(name: str) -> Datatype:
    """The datatype called `name`; KeyError with the valid names when there is none."""
    try:
        return DATATYPES[name]
    except KeyError:
        raise KeyError(f"datatype {name!r} is not one of {', '.join(DATATYPES)}") from None


def numpy_dtype(name: str) -> np.dtype:
    return datatype_named(name).numpy_dtype


def datatype_of_torch(torch_dtype: str) -> str:
    """'torch.float32' or 'float32' -> 'FP32'."""
    wanted = torch_dtype.removeprefix("torch.")
    return next(d.name for d in DATATYPES.values() if d.torch_dtype == wanted)


def datatype_of_array(array: np.ndarray) -> Datatype:
    """The v2 datatype an array carries: strings of any kind are BYTES, uint16 is UINT16."""
    kind = array.dtype.kind
    if kind in "OSU":
        return DATATYPES["BYTES"]
    name = _BY_NUMPY.get(array.dtype.newbyteorder("="))
    if name is None:
        raise KeyError(f"numpy dtype {array.dtype} has no v2 datatype")
    return DATATYPES[name]


def bf16_bits_from_float32(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even) and return the bits as uint16."""
    floats = np.ascontiguousarray(values, dtype=np.float32)
    bits = floats.view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit rounds to nearest even; NaNs instead keep their top
    # bits with the quiet bit set, since rounding could carry a NaN into infinity.
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    quiet_nan = (bits >> 16) | 0x0040
    return np.where(np.isnan(floats), quiet_nan, rounded).astype(np.uint16)


def float32_from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """The exact float32 value of each bfloat16 given as uint16 bits."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


_JSON_TYPE_NAMES = {
    dict: "an object", list: "an array", str: "a string", bool: "a boolean",
    int: "a number", float: "a number", type(None): "null",
}  # fmt: skip


def json_type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


# ---- binary form ------------------------------------------------------------------------------


def array_from_binary(buffer: memoryview, datatype: Datatype, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor in `buffer`, which must be exactly its binary form; a view, not a copy."""
    count = math.prod(shape)
    if datatype.itemsize_bytes is None:
        return _bytes_elements(buffer, count).reshape(shape)
    expected = count * datatype.itemsize_bytes
    if buffer.nbytes != expected:
        raise TensorDataError(
            f"binary_data_size is {buffer.nbytes} but shape {shape_text(shape)} of "
            f"{datatype.name} needs {expected} bytes"
        )
    return np.frombuffer(buffer, datatype.numpy_dtype, count).reshape(shape)


def _bytes_elements(data: memoryview, count: int) -> np.ndarray:
    if count * _LENGTH_PREFIX.size > data.nbytes:
        raise TensorDataError(
            f"{count} BYTES elements need at least {count * 4} bytes of length prefixes "
            f"but binary_data_size is {data.nbytes}"
        )
    elements = np.empty(count, dtype=object)
    position = 0
    for index in range(count):
        if position + _LENGTH_PREFIX.size > data.nbytes:
            raise TensorDataError(f"BYTES element {index} has no 4-byte length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(data, position)
        position += _LENGTH_PREFIX.size
        if position + length > data.nbytes:
            raise TensorDataError(
                f"BYTES element {index} declares {length} bytes but only "
                f"{data.nbytes - position} remain in its binary_data_size"
            )
        elements[index] = shared_bytes(data[position : position + length])
        position += length
    if position != data.nbytes:
        raise TensorDataError(f"{data.nbytes - position} bytes are left over after its {count} BYTES elements")
    return elements


def binary_data(array: np.ndarray, datatype: Datatype) -> bytes | memoryview:
    """The binary form of `array` as `datatype`; for a contiguous array, a view of its buffer."""
    if datatype.is_bytes:
        items = [_element_bytes(item) for item in array.ravel().tolist()]
        return b"".join(_LENGTH_PREFIX.pack(len(item)) + item for item in items)
    return np.ascontiguousarray(array, dtype=datatype.numpy_dtype).reshape(-1).data


def _element_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    raise TensorDataError(f"BYTES elements must be bytes or str, got {type(item).__name__}")


# ---- JSON form --------------------------------------------------------------------------------


def array_from_json(data: Any, datatype: Datatype, shape: tuple[int, ...]) -> np.ndarray:
    """A new array from JSON `data`, flat or nested as `shape` says, checked against `datatype`."""
    if not isinstance(data, list):
        raise TensorDataError(f"data must be a JSON array, got {json_type_name(data)}")
    if datatype.is_bytes:
        flat, nested_shape = _flatten_strings(data)
        values = np.empty(len(flat), dtype=object)
        values[:] = [text.encode() for text in flat]
    else:
        values = _numbers(data)
        if values.dtype.kind == "f" and datatype.name == "UINT64":
            values = _exact_uint64(data)
        nested_shape = values.shape
    _check_layout(nested_shape, shape, values.size)
    if not datatype.is_bytes:
        values = _cast(values, datatype)
    return values.reshape(shape)


def _numbers(data: list[Any]) -> np.ndarray:
    try:
        return np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise TensorDataError(
            "data is not a regular array (rows of different lengths, numbers mixed with "
            f"lists, or more than {MAX_DIMS} levels of nesting)"
        ) from None


def _exact_uint64(data: list[Any]) -> np.ndarray:
    # numpy turns integers past INT64 mixed with smaller ones into float64, losing digits; the
    # shape is known to be regular here, so an object array keeps each Python int exact.
    objects = np.asarray(data, dtype=object)
    if not all(type(item) is int and 0 <= item < 2**64 for item in objects.flat):
        raise TensorDataError(f"UINT64 data must hold integers in 0..{2**64 - 1}")
    return objects.astype(np.uint64)


def _flatten_strings(data: list[Any]) -> tuple[list[str], tuple[int, ...]]:
    # Level by level rather than recursively, so deep nesting costs a loop, never the stack.
    level: list[Any] = data
    shape = [len(data)]
    while level and isinstance(level[0], list):
        width = len(level[0])
        if not all(isinstance(row, list) and len(row) == width for row in level):
            raise TensorDataError(
                "data is not a regular array (rows of different lengths, or strings mixed with lists)"
            )
        level = [item for row in level for item in row]
        shape.append(width)
    for item in level:
        if not isinstance(item, str):
            raise TensorDataError(f"BYTES data must hold strings, got {json_type_name(item)}")
    return level, tuple(shape)


def _check_layout(nested_shape: tuple[int, ...], shape: tuple[int, ...], size: int) -> None:
    if len(nested_shape) > 1 and nested_shape != shape:
        raise TensorDataError(
            f"data is nested as {shape_text(nested_shape)} but shape is {shape_text(shape)}; "
            "nest it as the shape says or send it flat"
        )
    count = math.prod(shape)
    if size != count:
        raise TensorDataError(f"shape {shape_text(shape)} has {count} elements but data has {size}")


def _cast(values: np.ndarray, datatype: Datatype) -> np.ndarray:
    if values.size == 0:
        return np.empty(values.shape, datatype.numpy_dtype)
    kind = values.dtype.kind
    if datatype.name == "BOOL":
        if kind != "b":
            raise TensorDataError(f"BOOL data must hold true/false, got {_kind_name(kind)}")
        return values
    if kind not in "biuf":
        raise TensorDataError(f"{datatype.name} data must hold numbers, got {_kind_name(kind)}")
    if datatype.numpy_dtype.kind == "f" or datatype.name == "BF16":
        return _to_float(values, datatype)
    if kind == "f":
        raise TensorDataError(f"{datatype.name} data must hold integers, got numbers with a fraction or exponent")
    return _to_int(values, datatype)


def _kind_name(kind: str) -> str:
    names = {"b": "booleans", "U": "strings", "O": "nulls, objects or out-of-range integers"}
    return names.get(kind, "numbers")


def _to_float(values: np.ndarray, datatype: Datatype) -> np.ndarray:
    carrier = np.float32 if datatype.name == "BF16" else datatype.numpy_dtype
    with np.errstate(over="ignore"):
        converted = values.astype(carrier)
    # JSON has no infinities, so any here is a value too large for the datatype.
    if not np.isfinite(converted).all():
        raise TensorDataError(f"data holds a value too large for {datatype.name}")
    return bf16_bits_from_float32(converted) if datatype.name == "BF16" else converted


def _to_int(values: np.ndarray, datatype: Datatype) -> np.ndarray:
    limits = np.iinfo(datatype.numpy_dtype)
    low, high = int(values.min()), int(values.max())  # Python ints compare across all ranges
    if low < limits.min or high > limits.max:
        bad = low if low < limits.min else high
        raise TensorDataError(f"{bad} is outside {datatype.name}'s range {limits.min}..{limits.max}")
    return values.astype(datatype.numpy_dtype)


def json_data(array: np.ndarray, datatype: Datatype) -> Any:
    """`array` as `datatype`, flat, in a form orjson writes with OPT_SERIALIZE_NUMPY."""
    if datatype.is_bytes:
        return [_element_text(item) for item in array.ravel().tolist()]
    if datatype.name == "BF16":
        return float32_from_bf16_bits(array.reshape(-1))
    # orjson writes a native-order, C-contiguous array straight from its buffer: several times
    # faster than .tolist() (bench/codec_v2.py), and float32 keeps its short form.
    native = datatype.numpy_dtype.newbyteorder("=")
    return np.ascontiguousarray(array, dtype=native).reshape(-1)


def _element_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    try:
        return _element_bytes(item).decode()
    except UnicodeDecodeError:
        raise TensorDataError(
            "BYTES that are not UTF-8 text cannot go in JSON; ask for the output with binary_data true"
        ) from None
