"""Big tensors in shared-memory segments on the channel, without processes: what goes in a segment
and what stays on the socket, every numeric datatype round trip, client-region descriptors, an
unreadable region, and the sweeps that free what a dead process left."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferd.channel import decode, encode
from inferd.messages import Batch, BatchDone
from inferd.segments import (
    SHM_DIR,
    THRESHOLD_BYTES,
    RegionUnreadable,
    SegmentReader,
    SegmentWriter,
    SharedBytes,
    region_view,
    shared_bytes,
    segment_prefix,
    sweep_daemon,
    sweep_worker,
)

NUMERIC = ["?", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8", "c8"]


class Counted:
    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}

    def __call__(self, path: str, nbytes: int) -> None:
        self.bytes[path] = self.bytes.get(path, 0) + nbytes


def own_segments(prefix: str) -> list[str]:
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))


@pytest.fixture
def prefix() -> str:
    # A worker pid no process has: these tests' names never meet a real daemon's.
    return segment_prefix(os.getpid(), 10_000_000 + uuid.uuid4().int % 1_000_000, "m")


def round_trip(message: object, writer: SegmentWriter, reader: SegmentReader) -> object:
    frames = encode(message, writer)
    return decode(bytearray(frames[0]), [bytearray(frame) for frame in frames[1:]], reader)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_numeric_datatype_crosses_in_a_segment_unchanged(dtype: str, prefix: str) -> None:
    count = THRESHOLD_BYTES // np.dtype(dtype).itemsize + 7
    array = (np.arange(count) % 120).astype(dtype).reshape(-1, 1)
    sent, received = Counted(), Counted()
    writer, reader = SegmentWriter(prefix, count=sent), SegmentReader(received)
    frames = encode(Batch(1, [{"input": array}]), writer)
    assert sum(memoryview(frame).nbytes for frame in frames) < 4096  # only the descriptor on the socket
    assert len(own_segments(prefix)) == 1
    message = decode(bytearray(frames[0]), [bytearray(f) for f in frames[1:]], reader)
    got = message.payloads[0]["input"]
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)
    assert sent.bytes == received.bytes == {"segment": array.nbytes}
    assert reader.take_freed() == ()  # viewed still
    del message, got
    freed = reader.take_freed()
    assert freed == tuple(own_segments(prefix))
    writer.release(freed)
    encode(Batch(2, [{"input": array}]), writer)
    assert own_segments(prefix) == list(freed)  # the pool's segment again, no new one
    writer.close()
    assert own_segments(prefix) == []


def test_a_pool_keeps_a_few_segments_and_tells_the_peer_of_those_it_unlinks(prefix: str) -> None:
    writer, reader = SegmentWriter(prefix), SegmentReader()
    array = np.ones(THRESHOLD_BYTES // 4, dtype=np.float32)
    frames = encode([array.copy() for _ in range(5)], writer)  # five at once: five segments
    views = decode(bytearray(frames[0]), [], reader)
    assert len(own_segments(prefix)) == 5
    del views
    writer.release(reader.take_freed())
    gone = writer.take_gone()
    assert len(gone) == 3 and len(own_segments(prefix)) == 2  # two kept for the next messages
    reader.forget(gone)
    writer.close()
    reader.close()
    assert own_segments(prefix) == []


def test_small_arrays_strings_and_objects_stay_on_the_socket(prefix: str) -> None:
    small = np.ones(THRESHOLD_BYTES // 8 - 1)
    texts = np.array(["a" * 10] * 40_000, dtype=object)
    sent = Counted()
    message = round_trip(
        BatchDone(3, [{"out": small, "texts": texts}], 0.1), SegmentWriter(prefix, count=sent), SegmentReader()
    )
    assert sent.bytes == {} and own_segments(prefix) == []
    assert np.array_equal(message.results[0]["out"], small) and list(message.results[0]["texts"]) == list(texts)


def test_large_raw_items_cross_in_a_segment_and_arrive_as_plain_bytes(prefix: str) -> None:
    body = os.urandom(THRESHOLD_BYTES + 11)
    item = shared_bytes(body)
    assert isinstance(item, SharedBytes) and item == body
    sent, received = Counted(), Counted()
    writer, reader = SegmentWriter(prefix, count=sent), SegmentReader(received)
    frames = encode(Batch(1, [[item, b"small"]]), writer)
    assert sum(memoryview(frame).nbytes for frame in frames) < 4096  # only the segment's name on the socket
    got = decode(bytearray(frames[0]), [bytearray(f) for f in frames[1:]], reader).payloads[0]
    assert type(got[0]) is bytes and got[0] == body and got[1] == b"small"
    assert sent.bytes == received.bytes == {"segment": len(body)}
    freed = reader.take_freed()  # copied out: the segment is free at once
    assert freed == tuple(own_segments(prefix))
    writer.release(freed)
    encode(Batch(2, [[shared_bytes(body)]]), writer)
    assert own_segments(prefix) == list(freed)  # the pool's segment again
    writer.close()
    reader.close()
    assert own_segments(prefix) == []


def test_small_raw_items_stay_plain_and_shared_bytes_go_on_the_socket_without_shared_memory(prefix: str) -> None:
    assert type(shared_bytes(b"x" * 100)) is bytes and shared_bytes(memoryview(b"abc")) == b"abc"
    writer = SegmentWriter(prefix)
    writer._enabled = False  # as where /dev/shm cannot be written
    body = os.urandom(THRESHOLD_BYTES)
    got = round_trip([shared_bytes(body)], writer, SegmentReader())
    assert type(got[0]) is bytes and got[0] == body and own_segments(prefix) == []


@pytest.mark.parametrize("dtype", [*NUMERIC, ">i4", "<U3", "O"])
@pytest.mark.parametrize("shape", [(), (0, 16), (1, 16), (3, 2, 2)])
def test_small_arrays_cross_by_value_writable_with_their_dtype_and_shape(
    dtype: str, shape: tuple[int, ...], prefix: str
) -> None:
    array = np.arange(int(np.prod(shape))).astype(dtype).reshape(shape)
    sent = Counted()
    got = round_trip(Batch(1, [{"input": array}]), SegmentWriter(prefix, count=sent), SegmentReader())
    received = got.payloads[0]["input"]  # type: ignore[attr-defined]
    assert received.dtype == array.dtype and received.shape == array.shape and np.array_equal(received, array)
    assert received.flags.writeable  # a handler may work in place on its inputs, as on numpy's own copies
    assert sent.bytes == {} and own_segments(prefix) == []


def test_views_and_transposes_cross_as_their_values(prefix: str) -> None:
    base = np.arange(THRESHOLD_BYTES, dtype=np.float32).reshape(512, -1)
    small = base[:8, :8]
    parts = {"transposed": base.T, "strided": base[::2], "split": np.split(base, [100])[1],
             "small strided": small[::2], "small fortran": np.asfortranarray(small)}  # fmt: skip
    message = round_trip(parts, SegmentWriter(prefix), SegmentReader())
    for name, part in parts.items():
        assert np.array_equal(message[name], part), name  # type: ignore[index]


@pytest.fixture
def client_region() -> Iterator[tuple[str, mmap.mmap]]:
    key = f"/inferd-test-region-{uuid.uuid4().hex[:8]}"
    path = SHM_DIR / key.lstrip("/")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(descriptor, 3 * mmap.PAGESIZE)
    mapping = mmap.mmap(descriptor, 3 * mmap.PAGESIZE)
    os.close(descriptor)
    yield key, mapping
    path.unlink(missing_ok=True)


def test_a_client_region_crosses_as_a_descriptor_and_is_read_from_the_region(
    client_region: tuple[str, mmap.mmap], prefix: str
) -> None:
    key, mapping = client_region
    offset = mmap.PAGESIZE + 12  # not page-aligned: the worker maps the pages around it
    values = np.arange(24, dtype=np.float64).reshape(4, 6)
    mapping[offset : offset + values.nbytes] = values.tobytes()
    view = region_view(mapping, key, offset, values.dtype, values.shape)
    sent = Counted()
    frames = encode({"input": view, "row": view[1:2]}, SegmentWriter(prefix, count=sent))
    assert len(frames) == 1 and len(frames[0]) < 1024  # nothing of the tensor on the socket
    assert sent.bytes == {"client_region": values.nbytes}  # a slice of the view is a plain array
    message = decode(bytearray(frames[0]), [], SegmentReader())
    assert np.array_equal(message["input"], values) and np.array_equal(message["row"], values[1:2])
    assert not view.flags.writeable


def test_a_region_gone_before_the_worker_maps_it_is_unreadable(client_region: tuple[str, mmap.mmap]) -> None:
    key, mapping = client_region
    view = region_view(mapping, key, 0, np.dtype(np.float32), (2, 8))
    frames = encode({"input": view}, SegmentWriter("unused-"))
    (SHM_DIR / key.lstrip("/")).unlink()
    got = decode(bytearray(frames[0]), [], SegmentReader())["input"]
    assert isinstance(got, RegionUnreadable) and key in got.message and "could not be read" in got.message


def test_sweeps_free_only_what_a_dead_worker_or_daemon_left() -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, me = int(gone.stdout), os.getpid()
    names = {
        "dead_worker": f"{segment_prefix(me, dead_pid, 'w')}0",
        "live_worker": f"{segment_prefix(me, me, 'm')}0",
        "dead_daemon": f"{segment_prefix(dead_pid, 5, 'm')}0",
        "client": f"inferd-test-client-{uuid.uuid4().hex[:8]}",
    }
    for name in names.values():
        (SHM_DIR / name).write_bytes(b"x")
    try:
        assert sweep_worker(me, dead_pid) >= 1
        assert not (SHM_DIR / names["dead_worker"]).exists() and (SHM_DIR / names["live_worker"]).exists()
        sweep_daemon(me)
        left = {key for key, name in names.items() if (SHM_DIR / name).exists()}
        assert left == {"client"}  # a client's object is the client's, whatever its name
    finally:
        for name in names.values():
            Path(SHM_DIR / name).unlink(missing_ok=True)
