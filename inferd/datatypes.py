"""Tensor datatypes by their Open Inference Protocol names, with their numpy and torch forms.

numpy has no bfloat16: BF16 tensors travel as uint16 holding the raw bits, and the worker views
them as torch.bfloat16. BYTES tensors are numpy object arrays and exist only for handler models.
"""

from __future__ import annotations

import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(object),
}

TORCH_DTYPE_NAMES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BF16": "bfloat16",
}  # fmt: skip

_BY_NUMPY = {dtype: name for name, dtype in NUMPY_DTYPES.items() if name != "BF16"}
_BY_TORCH = {torch_name: name for name, torch_name in TORCH_DTYPE_NAMES.items()}


def numpy_dtype(datatype: str) -> np.dtype:
    return NUMPY_DTYPES[datatype]


def datatype_of_numpy(dtype: np.dtype) -> str:
    """The v2 name for a numpy dtype; strings and bytes are BYTES."""
    if dtype.kind in "OSU":
        return "BYTES"
    return _BY_NUMPY[np.dtype(dtype).newbyteorder("=")]


def datatype_of_torch(torch_dtype_name: str) -> str:
    """'torch.float32' or 'float32' -> 'FP32'."""
    return _BY_TORCH[torch_dtype_name.removeprefix("torch.")]
