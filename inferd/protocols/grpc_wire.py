"""ModelInferRequest and ModelInferResponse on the wire, with their tensor bytes left where they are.

protobuf (upb) copies a `bytes` field twice on its way in: into its arena as it parses, and into a
new Python object each time the field is read; on the way out it copies each appended entry, then
the whole message as it serializes. For a 4 MiB `raw_input_contents` entry those copies cost more
than the transport. Here the message's top-level fields are walked (tag, wire type, length): the
`raw_input_contents` entries (field 7) become memoryviews of the bytes grpcio received, and only
the other fields, a few hundred bytes, go through protobuf. A response's `raw_output_contents`
(field 6) entries are written after the rest of the message in one join, each copied once.

Protobuf's semantics are kept: fields may come in any order and repeat (a repeated field's entries
keep their order either way); anything this walk does not take, a group, a truncated field, a
wrong wire type for field 7, goes to protobuf's own parser whole, which answers what it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inferd.protocols.grpc_pb import grpc_service_pb2 as pb

_RAW_INPUT_CONTENTS = pb.ModelInferRequest.RAW_INPUT_CONTENTS_FIELD_NUMBER
_RAW_OUTPUT_CONTENTS = pb.ModelInferResponse.RAW_OUTPUT_CONTENTS_FIELD_NUMBER
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_FIXED_SIZES = {_FIXED64: 8, _FIXED32: 4}


class _Unwalkable(Exception):
    """Something protobuf's own parser should judge (and will refuse, if it is malformed)."""


@dataclass(frozen=True)
class InferCall:
    """A received ModelInferRequest: every field but `raw_input_contents` in `message`, and those
    entries as views of the received bytes (read-only, as protobuf's would be)."""

    message: pb.ModelInferRequest
    raw_input_contents: Sequence[memoryview]


@dataclass(frozen=True)
class InferReply:
    """A ModelInferResponse to send: `raw_output_contents` kept out of `message`, as buffers."""

    message: pb.ModelInferResponse
    raw_output_contents: Sequence[memoryview]


def parse_infer_call(data: bytes) -> InferCall:
    """grpcio's request deserializer for ModelInfer and ModelStreamInfer."""
    view = memoryview(data)
    try:
        rest, raw = _split(view, _RAW_INPUT_CONTENTS)
    except _Unwalkable:
        message = pb.ModelInferRequest.FromString(data)
        return InferCall(message, [memoryview(entry) for entry in message.raw_input_contents])
    if not raw:  # nothing to keep out of protobuf: no need to join the rest into a new buffer
        return InferCall(pb.ModelInferRequest.FromString(data), raw)
    return InferCall(pb.ModelInferRequest.FromString(b"".join(rest)), raw)


def serialize_infer_reply(reply: InferReply) -> bytes:
    """grpcio's response serializer for ModelInfer: the message, then each raw entry as field 6."""
    parts: list[bytes | memoryview] = [reply.message.SerializeToString()]
    tag = _varint_bytes(_RAW_OUTPUT_CONTENTS << 3 | _LENGTH_DELIMITED)
    for entry in reply.raw_output_contents:
        parts += (tag, _varint_bytes(entry.nbytes), entry)
    return b"".join(parts)


def infer_response(reply: InferReply) -> pb.ModelInferResponse:
    """The whole message (for a stream's answer, which carries it inside another)."""
    response = pb.ModelInferResponse()
    response.CopyFrom(reply.message)
    response.raw_output_contents.extend(bytes(entry) for entry in reply.raw_output_contents)
    return response


def _split(view: memoryview, field_number: int) -> tuple[list[memoryview], list[memoryview]]:
    """(the spans of every other field, the payloads of `field_number`'s length-delimited entries)."""
    rest: list[memoryview] = []
    taken: list[memoryview] = []
    position, rest_from = 0, 0
    while position < len(view):
        tag, payload_at = _varint(view, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _LENGTH_DELIMITED:
            length, payload_at = _varint(view, payload_at)
            end = payload_at + length
        elif wire_type == _VARINT:
            _, end = _varint(view, payload_at)
        elif wire_type in _FIXED_SIZES:
            end = payload_at + _FIXED_SIZES[wire_type]
        else:
            raise _Unwalkable  # a group (deprecated) or no wire type at all
        if end > len(view):
            raise _Unwalkable
        if number == field_number:
            if wire_type != _LENGTH_DELIMITED:
                raise _Unwalkable
            rest.append(view[rest_from:position])
            taken.append(view[payload_at:end])
            rest_from = end
        position = end
    rest.append(view[rest_from:])
    return rest, taken


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(view) and shift < 64:
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise _Unwalkable


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
