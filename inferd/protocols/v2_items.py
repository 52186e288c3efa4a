"""A handler model's items from a v2 request's tensors, and its encoded outputs as v2 tensors.

A handler with one input takes the elements of the request's one tensor along its batch dim as
items; with several declared inputs, item i is `{name: that input's row i}` for every input. A row
of more than one dimension becomes nested lists, BYTES become str where they are UTF-8 (else stay
bytes). Outputs go the other way: one output per item, or a dict of the declared outputs per item,
stacked along a new batch dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from inferd.datatypes import datatype_of_array
from inferd.errors import BadRequest, ModelUnavailable
from inferd.messages import Items, Parameters, Payload, TensorInfo
from inferd.protocols.v2_codec import V2InferRequest


def handler_payload(request: V2InferRequest, names: Sequence[str] | None) -> tuple[Payload, int]:
    """The request's items (and its parameters, when it gave any); `names`: the declared inputs
    of a handler that takes several, None for one that takes one."""
    items = _single_items(request) if names is None else _named_items(request, names)
    parameters = Parameters(request.model_parameters, request.output_parameters)
    if parameters.request or parameters.outputs:
        return Items(items, parameters), len(items)
    return items, len(items)


def _single_items(request: V2InferRequest) -> list[Any]:
    if len(request.inputs) != 1:
        raise BadRequest(f"a handler model takes one input tensor of items; the request gave {len(request.inputs)}")
    array = next(iter(request.inputs.values()))
    if array.ndim == 0 or len(array) == 0:
        raise BadRequest("the input needs a batch dimension with at least one item")
    return [_value(element) for element in array]


def _named_items(request: V2InferRequest, names: Sequence[str]) -> list[Any]:
    # The decoder checked the names, datatypes, shapes and that every input has the same rows.
    columns = {name: [_value(row) for row in request.inputs[name]] for name in names}
    return [dict(zip(names, values)) for values in zip(*columns.values())]


def _value(element: Any) -> Any:
    if isinstance(element, bytes):
        return _text(element)
    if isinstance(element, np.ndarray):
        values = element.tolist()
        return _texts(values) if element.dtype == np.object_ else values
    return element.item() if isinstance(element, np.generic) else element


def _texts(values: Any) -> Any:
    if isinstance(values, list):
        return [_texts(value) for value in values]
    return _text(values) if isinstance(values, bytes) else values


def _text(element: bytes) -> str | bytes:
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        return element


def handler_tensors(model: str, encoded: list[Any], outputs: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
    """The encoded outputs of a request's items as one tensor per output."""
    if len(outputs) > 1:  # the worker checked that each is a dict holding every declared output
        return {spec.name: _stacked(model, spec.name, [item[spec.name] for item in encoded]) for spec in outputs}
    name = outputs[0].name if outputs else "output"
    return {name: _stacked(model, name, encoded)}


def _stacked(model: str, name: str, values: list[Any]) -> np.ndarray:
    structured = _json_elements(values)
    if structured is not None:
        return structured
    try:
        array = np.asarray(values)
        if array.dtype.kind in "US":
            array = array.astype(np.object_)
        if array.dtype == np.object_:
            array = np.array([_bytes(value) for value in array.ravel()], dtype=np.object_).reshape(array.shape)
        datatype_of_array(array)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelUnavailable(f"model {model!r}: its output {name!r} does not form one tensor ({error})") from None
    return array


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, str)):
        return value.encode() if isinstance(value, str) else value
    raise TypeError(f"a BYTES element must be str or bytes, got {type(value).__name__}")


def _json_elements(values: list[Any]) -> np.ndarray | None:
    """Outputs that are JSON structures (e.g. a list of labels with scores), as one BYTES element
    of JSON text each; None where they form a numeric or text tensor."""
    if not any(isinstance(value, (dict, list)) for value in values):
        return None
    try:
        if np.asarray(values).dtype.kind in "biufU":
            return None
    except ValueError:
        pass  # ragged: not a tensor
    return np.array([orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY) for value in values], dtype=object)
