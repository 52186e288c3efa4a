"""Channel framing: the main end (MainChannel) fed byte by byte, in odd chunks and over a real socket
pair against the worker end (a multiprocess Connection); long-length prefixes; a peer that closes
mid-frame."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import multiprocess.connection
import numpy as np
import pytest

from inferd.channel import IN_BAND_LIMIT_BYTES, Channel, ChannelClosed, MainChannel, connect, encode, length_prefix
from inferd.messages import Batch, BatchDone, Stop


def wire(message: object) -> bytes:
    """A message as the worker end writes it on the socket."""
    return b"".join(length_prefix(len(frame)) + bytes(frame) for frame in encode(message))


class Fed:
    """A MainChannel driven through get_buffer/buffer_updated, as the event loop drives it."""

    def __init__(self) -> None:
        self.messages: list[object] = []
        self.closed = 0
        self.channel = MainChannel(self.messages.append, self._closed)

    def _closed(self) -> None:
        self.closed += 1

    def feed(self, data: bytes, chunk_sizes: list[int] | None = None) -> None:
        """Feed `data` in chunks no larger than each of `chunk_sizes` (cycled), or as offered."""
        sizes = chunk_sizes or [len(data)]
        offset, n = 0, 0
        while offset < len(data):
            buffer = self.channel.get_buffer(-1)
            size = min(len(buffer), sizes[n % len(sizes)], len(data) - offset)
            assert size > 0, "the channel offered an empty buffer with data left"
            buffer[:size] = data[offset : offset + size]
            self.channel.buffer_updated(size)
            offset, n = offset + size, n + 1


def test_a_message_fed_one_byte_at_a_time_arrives_once_and_whole() -> None:
    fed = Fed()
    fed.feed(wire(Batch(7, [["a", "b"]])), [1])
    assert fed.messages == [Batch(7, [["a", "b"]])]


def test_messages_split_at_every_boundary_arrive_in_order() -> None:
    big = np.arange(IN_BAND_LIMIT_BYTES, dtype=np.float32)  # past the in-band limit: its own frame
    messages = [Batch(n, [{"input": big * n}]) for n in range(3)] + [Stop("x"), Batch(9, [[]])]
    stream = b"".join(wire(m) for m in messages)
    chooser = random.Random(5)
    fed = Fed()
    fed.feed(stream, [chooser.randint(1, 70_000) for _ in range(50)])
    assert len(fed.messages) == len(messages)
    for got, sent in zip(fed.messages, messages):
        if isinstance(sent, Batch) and sent.payloads and sent.payloads[0]:
            assert isinstance(got, Batch) and got.batch_id == sent.batch_id
            np.testing.assert_array_equal(got.payloads[0]["input"], sent.payloads[0]["input"])
        else:
            assert got == sent


def test_large_buffers_travel_as_their_own_frames() -> None:
    array = np.ones((IN_BAND_LIMIT_BYTES // 4) * 3, dtype=np.float32)
    frames = encode(BatchDone(1, [{"output": array}], 0.5))
    assert len(frames) == 2 and frames[1].nbytes == array.nbytes
    fed = Fed()
    fed.feed(wire(BatchDone(1, [{"output": array}], 0.5)), [4096])
    np.testing.assert_array_equal(fed.messages[0].results[0]["output"], array)


def test_the_long_length_prefix_is_minus_one_then_eight_bytes() -> None:
    assert length_prefix(0x7FFFFFFF) == struct.pack("!i", 0x7FFFFFFF)
    assert length_prefix(2**31) == struct.pack("!i", -1) + struct.pack("!Q", 2**31)
    assert length_prefix(5 * 2**30) == b"\xff\xff\xff\xff" + (5 * 2**30).to_bytes(8, "big")


def test_a_frame_with_a_long_length_prefix_is_read_by_both_ends() -> None:
    """The >2 GiB path at the prefix level: a small frame behind the long form of its length."""
    (frame,) = encode(Stop("long"))
    long_form = struct.pack("!i", -1) + struct.pack("!Q", len(frame)) + frame
    fed = Fed()
    fed.feed(long_form, [3])
    assert fed.messages == [Stop("long")]
    main_end, worker_end = socket.socketpair()
    with main_end, worker_end:
        main_end.sendall(long_form)
        assert Channel(multiprocess.connection.Connection(worker_end.detach())).recv() == Stop("long")


async def test_a_malformed_message_closes_the_channel_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    main_end, worker_end = socket.socketpair()
    closed = asyncio.Event()
    received: list[object] = []
    await connect(main_end, received.append, closed.set)
    with worker_end:
        worker_end.sendall(length_prefix(0) + length_prefix(12) + b"not a pickle")
        await asyncio.wait_for(closed.wait(), 30)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert received == [] and len(errors) == 1 and "cannot be read" in errors[0].getMessage()
    assert errors[0].exc_info is None


async def test_round_trip_over_a_socket_pair_with_the_worker_end() -> None:
    main_end, worker_end = socket.socketpair()
    received: list[object] = []
    arrived = asyncio.Event()

    def on_message(message: object) -> None:
        received.append(message)
        arrived.set()

    channel = await connect(main_end, on_message, lambda: None)
    worker = Channel(multiprocess.connection.Connection(worker_end.detach()))
    array = np.random.default_rng(1).random((300, 1024), dtype=np.float32)  # 1.2 MB: many reads
    channel.send(Batch(3, [{"input": array}]))
    got = await asyncio.to_thread(worker.recv)
    np.testing.assert_array_equal(got.payloads[0]["input"], array)
    await asyncio.to_thread(worker.send, BatchDone(3, [{"output": array * 2}], 0.1))
    await asyncio.wait_for(arrived.wait(), 30)
    np.testing.assert_array_equal(received[0].results[0]["output"], array * 2)


async def test_a_peer_closing_mid_frame_closes_the_channel_once_and_delivers_nothing() -> None:
    main_end, worker_end = socket.socketpair()
    received: list[object] = []
    closed = asyncio.Event()
    closes: list[int] = []

    def on_closed() -> None:
        closes.append(1)
        closed.set()

    channel = await connect(main_end, received.append, on_closed)
    data = wire(Batch(1, [{"input": np.zeros(IN_BAND_LIMIT_BYTES, dtype=np.uint8)}]))
    worker_end.sendall(data[: len(data) // 2])
    worker_end.close()
    await asyncio.wait_for(closed.wait(), 30)
    assert received == [] and closes == [1] and channel.closed
    with pytest.raises(ChannelClosed):
        channel.send(Stop())


def test_the_worker_end_reports_a_closed_peer_as_channel_closed() -> None:
    main_end, worker_end = socket.socketpair()
    worker = Channel(multiprocess.connection.Connection(worker_end.detach()))
    main_end.sendall(wire(Stop())[:6])
    main_end.close()
    with pytest.raises(ChannelClosed):
        worker.recv()
