"""Tensor datatypes of the Open Inference Protocol (KServe v2), in one table.

Each v2 datatype names the numpy dtype that carries it in the main process, the torch dtype a worker
turns it into (as a string, because the main process never imports torch), the `TYPE_*` name of
Triton's model configuration, and its size in the binary tensor form.

Two datatypes have no plain numpy counterpart:
- BF16 travels as `uint16` holding the raw bfloat16 bits. A worker makes it a `torch.bfloat16` tensor
  with `torch.from_numpy(bits).view(torch.bfloat16)`, and goes back with `.view(torch.uint16)` (or
  `.view(torch.int16)`). JSON carries BF16 as numbers, converted here through float32.
- BYTES travels as a numpy object array of `bytes`; it has no torch dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    np.dtype(datatype.numpy_dtype.name): datatype.name
    for datatype in DATATYPES.values()
    if datatype.name != "BF16"
}


def datatype_named(name: str) -> Datatype:
    """The datatype called `name`; KeyError with the valid names when there is none."""
    try:
        return DATATYPES[name]
    except KeyError:
        raise KeyError(f"datatype {name!r} is not one of {', '.join(DATATYPES)}") from None


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
