"""inferd's own JSON protocol: POST {"inputs": ...} to a model's route, get {"outputs": ...}.

Tensor models take `{"inputs": <nested list>}` (one input) or `{"inputs": {"<name>": <nested list>}}`,
with the batch dimension first (one request may carry several rows). Handler models take a list of
items (or one bare item) and answer with one encoded output per item (or the bare output).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.datatypes import bf16_bits_from_float32, float32_from_bf16_bits, numpy_dtype
from inferd.errors import BadRequest
from inferd.messages import Payload, TensorInfo

# Items cross to the worker by pickle and come back through orjson, both of which refuse deep
# nesting (pickle near 500 levels, orjson's encoder past 254): refuse it here, as the caller's fault.
MAX_ITEM_DEPTH = 128


@dataclass(frozen=True)
class DecodedRequest:
    payload: Payload
    items: int
    key: Hashable  # requests with different keys never share a batch
    bare_item: bool = False  # a handler request that sent one item, not a list


def decode(document: Any, inputs: tuple[TensorInfo, ...], is_handler: bool) -> DecodedRequest:
    if not isinstance(document, dict) or "inputs" not in document:
        raise BadRequest('the body must be a JSON object with an "inputs" field')
    if is_handler:
        return decode_items(document["inputs"])
    return decode_tensors(document["inputs"], inputs)


def decode_items(raw: Any) -> DecodedRequest:
    depth = nesting_depth(raw)
    if depth > MAX_ITEM_DEPTH:
        raise BadRequest(f'"inputs" is nested {depth} levels deep; items may nest at most {MAX_ITEM_DEPTH} levels')
    if isinstance(raw, list):
        if not raw:
            raise BadRequest('"inputs" is an empty list; send at least one item')
        return DecodedRequest(raw, len(raw), None)
    return DecodedRequest([raw], 1, None, bare_item=True)


def nesting_depth(value: Any) -> int:
    """How many lists and objects deep `value` goes (without recursion: JSON may nest 1,024 deep)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        kinds = set(map(type, children))  # in C: a list of numbers is seen at once, not walked
        if list in kinds or dict in kinds:
            pending.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return deepest


def decode_tensors(raw: Any, specs: tuple[TensorInfo, ...]) -> DecodedRequest:
    named = _name_inputs(raw, specs)
    arrays = {spec.name: to_array(spec, named[spec.name]) for spec in specs}
    rows = {len(array) for array in arrays.values()}
    if len(rows) > 1:
        raise BadRequest(f"inputs have different batch sizes {sorted(rows)}; every input needs the same rows")
    key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in arrays.items())
    return DecodedRequest(arrays, rows.pop(), key)


def _name_inputs(raw: Any, specs: tuple[TensorInfo, ...]) -> dict[str, Any]:
    names = [spec.name for spec in specs]
    if not isinstance(raw, dict):
        if len(specs) != 1:
            raise BadRequest(f'this model takes inputs {names}: send {{"inputs": {{"<name>": [...], ...}}}}')
        return {names[0]: raw}
    unknown = sorted(set(raw) - set(names))
    missing = [name for name in names if name not in raw]
    if unknown or missing:
        raise BadRequest(f"this model takes inputs {names}; missing {missing}, unknown {unknown}")
    return raw


def to_array(spec: TensorInfo, value: Any) -> np.ndarray:
    """A nested list as an array of the input's datatype and shape, or a 400 saying why not."""
    if not isinstance(value, list):
        raise BadRequest(f"input {spec.name!r}: expected a nested list with the batch dimension first")
    try:
        if spec.datatype == "BF16":
            array = bf16_bits_from_float32(np.asarray(value, dtype=np.float32))
        else:
            array = np.asarray(value, dtype=numpy_dtype(spec.datatype))
    except (ValueError, TypeError, OverflowError) as error:
        raise BadRequest(f"input {spec.name!r}: not a rectangular array of {spec.datatype} values ({error})") from None
    check_shape(spec, array.shape)
    return array


def check_shape(spec: TensorInfo, shape: tuple[int, ...]) -> None:
    if not shape or shape[0] == 0:
        raise BadRequest(f"input {spec.name!r}: needs a batch dimension with at least one row")
    declared = len(spec.shape) > 1 or spec.shape[0] != -1
    if declared and (len(shape) != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, shape))):
        raise BadRequest(f"input {spec.name!r}: shape {list(shape)} does not match {list(spec.shape)} (-1 = any)")


def encode(result: Payload, outputs: tuple[TensorInfo, ...], request: DecodedRequest) -> dict[str, Any]:
    if isinstance(result, list):  # a handler's encoded outputs, one per item
        return {"outputs": result[0] if request.bare_item else result}
    datatypes = {spec.name: spec.datatype for spec in outputs}
    arrays = {name: _json_ready(array, datatypes.get(name)) for name, array in result.items()}
    if len(arrays) == 1:
        return {"outputs": next(iter(arrays.values()))}
    return {"outputs": arrays}


def _json_ready(array: np.ndarray, datatype: str | None) -> np.ndarray:
    if datatype == "BF16":
        return float32_from_bf16_bits(array)
    return np.ascontiguousarray(array)
