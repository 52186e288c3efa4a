"""inferd's own JSON protocol: POST {"inputs": ...} to a model's route, get {"outputs": ...}.

A body of any other Content-Type than JSON (image/jpeg, image/png, application/octet-stream, ...)
is one raw item: its bytes go as they came to a handler model (or a pipeline whose first step is
one), e.g. `curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' .../models/classify/predict`.

Tensor models take `{"inputs": <nested list>}` (one input) or `{"inputs": {"<name>": <nested list>}}`,
with the batch dimension first (one request may carry several rows). Handler models take a list of
items (or one bare item) and answer with one encoded output per item (or the bare output). A
handler with several declared inputs takes them as columns, `{"inputs": {"a": [...], "b": [...]}}`
(one element per item, the same count in each), or as rows, `{"inputs": [{"a": ..., "b": ...}]}`;
with several declared outputs it answers in the same form. An optional `"parameters"` object
reaches a handler's `predict`; tensor models ignore it. `"stream": true` asks a handler whose
predict yields for its chunks as Server-Sent Events (inferd.protocols.predict_stream).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request

from inferd.admission import Reservation, payload_bytes
from inferd.datatypes import bf16_bits_from_float32, float32_from_bf16_bits, numpy_dtype
from inferd.errors import BadRequest, RequestError
from inferd.messages import Items, PackedItems, Parameters, Payload, TensorInfo
from inferd.protocols.http import body_limits, parse_json, read_body, read_decoded
from inferd.segments import shared_bytes

if TYPE_CHECKING:
    from inferd.daemon import Daemon, ServedModel

# Items cross to the worker by pickle and come back through orjson, both of which refuse deep
# nesting (pickle near 500 levels, orjson's encoder past 254): refuse it here, as the caller's fault.
MAX_ITEM_DEPTH = 128
_ELEMENTS_PER_SLICE = 64 * 1024  # about 0.5 ms of np.asarray on a list of floats
_SHOWN_NAMES = 8


# Bodies read as JSON: curl's -d sends form-urlencoded, and clients that set nothing mean JSON.
_JSON_LIKE_TYPES = frozenset({"", "application/json", "application/x-www-form-urlencoded", "text/plain"})


class UnsupportedMediaType(RequestError):
    status = 415


@dataclasses.dataclass(frozen=True)
class DecodedRequest:
    payload: Payload
    items: int
    key: Hashable  # requests with different keys never share a batch
    bare_item: bool = False  # a handler request that sent one item, not a list
    columns: bool = False  # a handler request that sent its named inputs as columns
    stream: bool = False  # "stream": true: the chunks of a handler whose predict yields, as they come


async def read_request(request: Request, daemon: Daemon, model: ServedModel, held: Reservation) -> DecodedRequest:
    """The request's body, read within its limits and `held`'s budget, decoded (off the loop when large)."""
    max_batch_size, inputs = model.config.max_batch_size, model.inputs
    limits = body_limits(daemon.config.server, model.name, max_batch_size, () if model.is_handler else inputs)
    decode = functools.partial(decode_body, inputs=inputs, is_handler=model.is_handler, max_batch_size=max_batch_size)
    in_process = functools.partial(decode_body, pack_items=True, **decode.keywords)
    return await read_decoded(request, limits, held, daemon.admission, decode, held_bytes, lambda _: in_process)


def is_raw(content_type: str | None) -> bool:
    """Whether a body of this Content-Type is one raw item rather than inferd's JSON."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type not in _JSON_LIKE_TYPES and not media_type.endswith("+json")


async def read_raw(request: Request, daemon: Daemon, model: ServedModel, held: Reservation) -> DecodedRequest:
    """The body's bytes as the request's one item, held within the memory budget as they arrive."""
    media_type = request.headers.get("content-type", "")
    if not model.is_handler:
        raise UnsupportedMediaType(
            f"model {model.name!r} takes tensors as JSON (Content-Type: application/json); "
            f"a raw {media_type} body goes only to a handler model or a pipeline that starts with one"
        )
    limits = body_limits(daemon.config.server, model.name, model.config.max_batch_size, ())
    body = await read_body(request, limits, held)
    if not body:
        raise BadRequest(f"the {media_type} body is empty; send the item's bytes (e.g. curl --data-binary @file)")
    held.resize(len(body))
    return DecodedRequest([shared_bytes(body)], 1, None, bare_item=True)


def decode_body(
    body: bytes, inputs: tuple[TensorInfo, ...], is_handler: bool, max_batch_size: int, pack_items: bool = False
) -> DecodedRequest:
    """A native request body, parsed and decoded; counts are checked before any per-element work.
    With `pack_items` (in the decoder process), a handler's items come back as one PackedItems."""
    decoded = decode(parse_json(body), inputs, is_handler, max_batch_size)
    if pack_items and isinstance(decoded.payload, list | Items):
        return dataclasses.replace(decoded, payload=PackedItems.pack(decoded.payload))
    return decoded


def held_bytes(decoded: DecodedRequest, body: bytes) -> int:
    """What a decoded request holds: its arrays, or, for items, about what their text took."""
    if not isinstance(decoded.payload, dict):
        return len(body)
    return payload_bytes(decoded.payload.values(), body)


def decode(
    document: Any, inputs: tuple[TensorInfo, ...], is_handler: bool, max_batch_size: int | None = None
) -> DecodedRequest:
    if not isinstance(document, dict) or "inputs" not in document:
        raise BadRequest('the body must be a JSON object with an "inputs" field')
    stream = document.get("stream", False)
    if not isinstance(stream, bool) or (stream and not is_handler):
        raise BadRequest(
            f'"stream" must be true or false (true only for a handler whose predict yields), got {stream!r}'
        )
    if not is_handler:
        return decode_tensors(document["inputs"], inputs, max_batch_size)
    raw = document["inputs"]
    names = [spec.name for spec in inputs]
    columns = len(names) > 1 and isinstance(raw, dict)
    decoded = decode_items(_rows(raw, names) if columns else raw, max_batch_size)
    if len(names) > 1:
        _check_named_items(decoded.payload, names)
    return _with_parameters(decoded, document.get("parameters"), columns, stream)


def _rows(columns: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """{"a": [a0, a1], "b": [b0, b1]} as [{"a": a0, "b": b0}, {"a": a1, "b": b1}]."""
    if set(columns) != set(names):
        raise BadRequest(f"this model takes inputs {names}; the request gave {sorted(columns)[:_SHOWN_NAMES]}")
    counts = {len(value) if isinstance(value, list) else -1 for value in columns.values()}
    if -1 in counts or len(counts) > 1:
        raise BadRequest(f"inputs {names}: give each a list with one element per item, all of the same length")
    return [dict(zip(names, values)) for values in zip(*(columns[name] for name in names))]


def _check_named_items(items: Any, names: list[str]) -> None:
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != set(names):
            given = sorted(item)[:_SHOWN_NAMES] if isinstance(item, dict) else type(item).__name__
            raise BadRequest(f"item {index}: this model takes inputs {names} (an object of them), got {given}")


def _with_parameters(decoded: DecodedRequest, parameters: Any, columns: bool, stream: bool) -> DecodedRequest:
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be a JSON object')
    payload = decoded.payload
    if parameters:
        assert isinstance(payload, list)
        payload = Items(payload, Parameters(request=parameters))
    return DecodedRequest(payload, decoded.items, decoded.key, decoded.bare_item, columns, stream)


def decode_items(raw: Any, max_batch_size: int | None = None) -> DecodedRequest:
    if isinstance(raw, list) and max_batch_size is not None:
        check_rows(len(raw), max_batch_size)
    depth = nesting_depth(raw)
    if depth > MAX_ITEM_DEPTH:
        raise BadRequest(f'"inputs" is nested {depth} levels deep; items may nest at most {MAX_ITEM_DEPTH} levels')
    if isinstance(raw, list):
        if not raw:
            raise BadRequest('"inputs" is an empty list; send at least one item')
        return DecodedRequest(raw, len(raw), None)
    return DecodedRequest([raw], 1, None, bare_item=True)


def check_rows(rows: int, max_batch_size: int) -> None:
    """Refuse a request of more rows than a batch takes, before any of them is converted."""
    if rows > max_batch_size:
        raise BadRequest(
            f"this request carries {rows} items but the model takes at most {max_batch_size} per batch "
            "(max_batch_size); split it into smaller requests"
        )


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


def decode_tensors(raw: Any, specs: tuple[TensorInfo, ...], max_batch_size: int | None = None) -> DecodedRequest:
    named = _name_inputs(raw, specs)
    if max_batch_size is not None:
        for spec in specs:
            if isinstance(named[spec.name], list):
                check_rows(len(named[spec.name]), max_batch_size)
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
    missing = [name for name in names if name not in raw]
    if len(raw) > len(names) or missing:  # the count first: an object may have a million keys
        unknown = [key for key in itertools.islice(raw, len(names) + _SHOWN_NAMES) if key not in names]
        more = " and more" if len(raw) - len(names) + len(missing) > len(unknown) else ""
        raise BadRequest(f"this model takes inputs {names}; missing {missing}, unknown {unknown[:_SHOWN_NAMES]}{more}")
    return raw


def to_array(spec: TensorInfo, value: Any) -> np.ndarray:
    """A nested list as an array of the input's datatype and shape, or a 400 saying why not."""
    if not isinstance(value, list):
        raise BadRequest(f"input {spec.name!r}: expected a nested list with the batch dimension first")
    try:
        if spec.datatype == "BF16":
            array = bf16_bits_from_float32(_rows_as_array(value, np.dtype(np.float32)))
        else:
            array = _rows_as_array(value, numpy_dtype(spec.datatype))
    except (ValueError, TypeError, OverflowError) as error:
        raise BadRequest(f"input {spec.name!r}: not a rectangular array of {spec.datatype} values ({error})") from None
    check_shape(spec, array.shape)
    return array


def _rows_as_array(rows: list[Any], dtype: np.dtype) -> np.ndarray:
    """np.asarray in slices of rows: each slice holds the GIL briefly, so the event loop gets it
    back between them while a large body converts on the decode thread."""
    first = np.asarray(rows[:1], dtype=dtype)
    step = max(1, _ELEMENTS_PER_SLICE // max(first.size, 1))
    if len(rows) <= step:
        return np.asarray(rows, dtype=dtype)
    parts = [first, *(np.asarray(rows[start : start + step], dtype=dtype) for start in range(1, len(rows), step))]
    return np.concatenate(parts)


def check_shape(spec: TensorInfo, shape: tuple[int, ...]) -> None:
    if not shape or shape[0] == 0:
        raise BadRequest(f"input {spec.name!r}: needs a batch dimension with at least one row")
    declared = len(spec.shape) > 1 or spec.shape[0] != -1
    if declared and (len(shape) != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, shape))):
        raise BadRequest(f"input {spec.name!r}: shape {list(shape)} does not match {list(spec.shape)} (-1 = any)")


def encode(result: Payload, outputs: tuple[TensorInfo, ...], request: DecodedRequest) -> dict[str, Any]:
    if isinstance(result, list):  # a handler's encoded outputs, one per item
        if request.columns and len(outputs) > 1:
            return {"outputs": {spec.name: [item[spec.name] for item in result] for spec in outputs}}
        return {"outputs": result[0] if request.bare_item else result}
    assert isinstance(result, dict)
    datatypes = {spec.name: spec.datatype for spec in outputs}
    arrays = {name: _json_ready(array, datatypes.get(name)) for name, array in result.items()}
    if len(arrays) == 1:
        return {"outputs": next(iter(arrays.values()))}
    return {"outputs": arrays}


def _json_ready(array: np.ndarray, datatype: str | None) -> np.ndarray:
    if datatype == "BF16":
        return float32_from_bf16_bits(array)
    return np.ascontiguousarray(array)
