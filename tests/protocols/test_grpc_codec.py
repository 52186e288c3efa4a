"""The gRPC codec and the shared-memory regions on their own: ModelInferRequest <-> numpy, every
datatype raw and typed, every malformed request a BadRequest naming the input, regions checked."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from inferd.datatypes import DATATYPES
from inferd.errors import BadRequest
from inferd.protocols.grpc_codec import CONTENTS_FIELDS, decode_infer_request, encode_infer_response
from inferd.protocols.grpc_pb import grpc_service_pb2 as pb
from inferd.protocols.grpc_wire import InferCall, InferReply, parse_infer_call, serialize_infer_reply
from inferd.protocols.shm import RegionExists, RegionRef, SharedMemory

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def received(request: pb.ModelInferRequest) -> InferCall:
    """The request as the server's deserializer hands it over, from its bytes on the wire."""
    return parse_infer_call(request.SerializeToString())


def sent(reply: InferReply) -> pb.ModelInferResponse:
    """The response as the client parses it, from the server serializer's bytes."""
    return pb.ModelInferResponse.FromString(serialize_infer_reply(reply))


def request_with(
    name: str, datatype: str, shape: list[int]
) -> tuple[pb.ModelInferRequest, pb.ModelInferRequest.InferInputTensor]:
    request = pb.ModelInferRequest(model_name="m")
    return request, request.inputs.add(name=name, datatype=datatype, shape=shape)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_inputs_decode_to_views_of_their_dtype(datatype: str) -> None:
    array = (np.arange(6).reshape(2, 3) % 2).astype(DATATYPES[datatype].numpy_dtype)
    request, _ = request_with("x", datatype, [2, 3])
    request.raw_input_contents.append(array.tobytes())
    decoded, targets = decode_infer_request(received(request), SharedMemory())
    assert np.array_equal(decoded.inputs["x"], array) and decoded.datatypes == {"x": datatype}
    assert targets == {}


@pytest.mark.parametrize("datatype", sorted(CONTENTS_FIELDS))
def test_typed_contents_decode(datatype: str) -> None:
    values = [b"a", b"bc"] if datatype == "BYTES" else [0, 1]
    request, entry = request_with("x", datatype, [2])
    getattr(entry.contents, CONTENTS_FIELDS[datatype]).extend(values)
    decoded, _ = decode_infer_request(received(request), SharedMemory())
    assert decoded.inputs["x"].tolist() == ([b"a", b"bc"] if datatype == "BYTES" else [0, 1])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r, e: r.raw_input_contents.extend([b"", b""]), "raw_input_contents has 2 entries"),
        (lambda r, e: setattr(e, "datatype", "FP128"), "datatype must be one of"),
        (lambda r, e: e.contents.fp32_contents.extend([1.0]), "has 2 elements but contents.fp32_contents has 1"),
        (lambda r, e: r.raw_input_contents.append(b"\0" * 7), "needs 8 bytes"),
        (lambda r, e: r.inputs.add(name="x", datatype="FP32", shape=[2]), "given twice"),
        (lambda r, e: e.shape.extend([-3]), "non-negative"),
        (
            lambda r, e: (setattr(e, "datatype", "INT8"), e.contents.int_contents.extend([1, 300])),
            "out of INT8's range",
        ),
        (lambda r, e: setattr(e, "datatype", "FP16"), "send it in raw_input_contents"),
    ],
)
def test_malformed_requests_are_bad_requests(build: object, message: str) -> None:
    request, entry = request_with("x", "FP32", [2])
    build(request, entry)  # type: ignore[operator]
    with pytest.raises(BadRequest, match=message):
        decode_infer_request(received(request), SharedMemory())


@pytest.fixture
def region_file() -> Iterator[str]:
    key = f"/inferd-codec-{uuid.uuid4().hex[:8]}"
    with open(f"/dev/shm{key}", "wb") as file:
        file.write(np.arange(8, dtype=np.float32).tobytes())
    yield key
    os.unlink(f"/dev/shm{key}")


def test_inputs_and_outputs_in_a_region(region_file: str) -> None:
    regions = SharedMemory()
    regions.register("r", region_file, 0, 32)
    request, entry = request_with("x", "FP32", [2])
    entry.parameters["shared_memory_region"].string_param = "r"
    entry.parameters["shared_memory_byte_size"].int64_param = 8
    entry.parameters["shared_memory_offset"].int64_param = 8
    wanted = request.outputs.add(name="y")
    wanted.parameters["shared_memory_region"].string_param = "r"
    wanted.parameters["shared_memory_byte_size"].int64_param = 8
    decoded, targets = decode_infer_request(received(request), regions)
    assert decoded.inputs["x"].tolist() == [2.0, 3.0]
    assert targets == {"y": RegionRef("r", 0, 8)}
    response = sent(
        encode_infer_response("m", "1", None, {"y": np.array([7.0, 9.0], np.float32)}, {}, targets, regions)
    )
    assert list(response.raw_output_contents) == [b""]  # the bytes went to the region
    assert regions.read(RegionRef("r", 0, 8), "check") == np.array([7.0, 9.0], np.float32).tobytes()
    regions.close()
    assert regions.status() == []


def test_regions_refuse_bad_registrations_and_references(region_file: str) -> None:
    regions = SharedMemory()
    with pytest.raises(BadRequest, match="cannot open"):
        regions.register("a", "/inferd-codec-absent", 0, 8)
    with pytest.raises(BadRequest, match="do not fit"):
        regions.register("a", region_file, 8, 32)
    with pytest.raises(BadRequest, match="POSIX shared-memory name"):
        regions.register("a", "/../../etc/passwd", 0, 8)
    regions.register("a", region_file, 8, 16)
    with pytest.raises(RegionExists):
        regions.register("a", region_file, 0, 8)
    with pytest.raises(BadRequest, match="do not fit"):
        regions.read(RegionRef("a", 12, 8), "input 'x'")
    with pytest.raises(BadRequest, match="larger"):
        regions.write(RegionRef("a", 0, 4), b"\0" * 8, "output 'y'")
    with pytest.raises(BadRequest, match="no shared-memory region named 'b'"):
        regions.read(RegionRef("b", 0, 4), "input 'x'")
    assert regions.read(RegionRef("a", 0, 4), "x") == np.float32(2.0).tobytes()  # offsets add up
    regions.unregister("a")
    regions.unregister("a")  # unregistering twice is no error, as in Triton
