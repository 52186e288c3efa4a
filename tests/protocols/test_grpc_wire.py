"""grpc_wire's walk of ModelInferRequest bytes and its writing of ModelInferResponse bytes, checked
against protobuf's own parser and serializer on the same messages."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from inferd.protocols.grpc_pb import grpc_service_pb2 as pb
from inferd.protocols.grpc_wire import InferReply, infer_response, parse_infer_call, serialize_infer_reply


def request(*raw: bytes) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", model_version="2", id="call-1")
    message.parameters["priority"].int64_param = 3
    for index, _ in enumerate(raw):
        message.inputs.add(name=f"x{index}", datatype="UINT8", shape=[len(raw[index])])
    message.outputs.add(name="y")
    message.raw_input_contents.extend(raw)
    return message


def without_raw(message: pb.ModelInferRequest) -> pb.ModelInferRequest:
    rest = pb.ModelInferRequest()
    rest.CopyFrom(message)
    rest.ClearField("raw_input_contents")
    return rest


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field, encoded by hand (payloads under 128 bytes: a one-byte length)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize("raw", [(), (b"",), (b"\x01\x02\x03",), (b"a" * 300, b"", bytes(range(256)) * 64)])
def test_a_request_splits_into_protobufs_fields_and_views_of_its_raw_entries(raw: tuple[bytes, ...]) -> None:
    message = request(*raw)
    data = message.SerializeToString()
    call = parse_infer_call(data)
    assert call.message == without_raw(message)
    assert [bytes(entry) for entry in call.raw_input_contents] == list(raw)
    assert all(entry.obj is data and entry.readonly for entry in call.raw_input_contents)  # views, not copies


def test_a_large_entry_is_a_view_numpy_reads_in_place() -> None:
    array = np.arange(1 << 20, dtype=np.float32)
    data = request(array.tobytes()).SerializeToString()
    (entry,) = parse_infer_call(data).raw_input_contents
    decoded = np.frombuffer(entry, np.float32)
    assert np.array_equal(decoded, array)
    assert decoded.base is not None and np.shares_memory(decoded, np.frombuffer(data, np.uint8))


def test_fields_in_any_order_and_unknown_fields_read_as_protobuf_reads_them() -> None:
    name, first_input, second_input = field(1, b"m"), field(5, b"\x0a\x01a"), field(5, b"\x0a\x01b")
    unknown = bytes([15 << 3 | 0, 0x96, 0x01])  # field 15, a varint: protobuf keeps it as unknown
    data = field(7, b"AA") + name + first_input + unknown + field(7, b"") + second_input + field(7, b"C")
    call = parse_infer_call(data)
    expected = pb.ModelInferRequest.FromString(data)
    assert call.message == without_raw(expected)
    assert [bytes(entry) for entry in call.raw_input_contents] == list(expected.raw_input_contents)
    assert [tensor.name for tensor in call.message.inputs] == ["a", "b"]


@pytest.mark.parametrize(
    "data",
    [
        field(1, b"m")[:-1],  # truncated inside a field
        bytes([7 << 3 | 2, 0x80]),  # a length whose varint never ends
        bytes([7 << 3 | 2, 50]) + b"short",  # a length past the end
    ],
)
def test_malformed_bytes_are_refused_as_protobuf_refuses_them(data: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)
    with pytest.raises(DecodeError):
        parse_infer_call(data)


@pytest.mark.parametrize(
    "odd",
    [
        bytes([14 << 3 | 3, 14 << 3 | 4]),  # an empty group (field 14): unknown to the message
        bytes([7 << 3 | 0, 5]),  # field 7 as a varint, not bytes
    ],
)
def test_what_the_walk_does_not_take_goes_to_protobuf_whole(odd: bytes) -> None:
    data = field(1, b"m") + odd + field(7, b"raw")
    expected = pb.ModelInferRequest.FromString(data)
    call = parse_infer_call(data)
    assert call.message == expected and call.message.model_name == "m"
    assert [bytes(entry) for entry in call.raw_input_contents] == list(expected.raw_input_contents)


@pytest.mark.parametrize("sizes", [[], [0], [3, 0, 200], [1 << 20]])
def test_a_reply_serializes_as_the_whole_message_would(sizes: list[int]) -> None:
    head = pb.ModelInferResponse(model_name="m", model_version="1", id="call-1")
    entries = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    for index, _ in enumerate(entries):
        head.outputs.add(name=f"y{index}", datatype="UINT8", shape=[sizes[index]])
    reply = InferReply(head, [memoryview(np.frombuffer(entry, np.uint8)) for entry in entries])
    whole = infer_response(reply)
    assert list(whole.raw_output_contents) == entries
    parsed = pb.ModelInferResponse.FromString(serialize_infer_reply(reply))
    assert parsed == whole
