"""Main<->worker transport: framed messages between the main process and one worker.

Protocol: every message is one pickled frame (protocol 5) whose first 8 bytes give the number of
buffer frames that follow, one per large numpy buffer sent out of band (small ones travel inside
the pickle: a frame costs a syscall). Frames are length-prefixed as multiprocess's Connection
writes them (4-byte big-endian length; -1 then an 8-byte length past 2 GiB).

The worker side is a blocking multiprocess Connection. The main side is an asyncio protocol on the
other end of the socket pair: reads go straight into each frame's own buffer and writes never
block the event loop, so a worker slow to read can never stall the server. A peer that closes
mid-frame ends the channel; the partial message is dropped (`on_closed` still fires once).
Starting the process at the other end is `inferd.process`'s job.

Arrays past a size threshold, and inputs already in a client's shared-memory region, do not go on
the socket: each end's SegmentWriter puts a descriptor in the pickle instead, and the other end's
SegmentReader maps it (see `inferd.segments`, which also says who frees what).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from inferd.segments import (
    THRESHOLD_BYTES,
    CountBytes,
    SegmentDirectory,
    SegmentNotice,
    SegmentReader,
    SegmentWriter,
    apply_notice,
    notice_for_peer,
    segment_prefix,
)

log = logging.getLogger(__name__)

_COUNT = struct.Struct("<Q")
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
IN_BAND_LIMIT_BYTES = 64 * 1024  # smaller buffers are cheaper copied into the pickle than framed


class ChannelClosed(Exception):
    """The other end has gone: the worker exited, or the main process died."""


def encode(message: object, writer: SegmentWriter | None = None) -> list[bytes | memoryview]:
    """A message as its frames: the pickle (with the count of buffer frames), then each buffer."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < IN_BAND_LIMIT_BYTES:
            return True
        buffers.append(raw)
        return False

    if writer is None:
        frame = pickle.dumps(message, protocol=5, buffer_callback=out_of_band)
    else:
        frame = writer.dumps(message, out_of_band)
    return [_COUNT.pack(len(buffers)) + frame, *buffers]


def decode(first: bytes | bytearray, buffers: list[Any], reader: SegmentReader | None = None) -> Any:
    if reader is not None:
        return reader.loads(memoryview(first)[_COUNT.size :], buffers)
    return pickle.loads(memoryview(first)[_COUNT.size :], buffers=buffers)


def buffer_count(first: bytes | bytearray) -> int:
    return int(_COUNT.unpack_from(first)[0])


def length_prefix(length: int) -> bytes:
    """A frame's length as multiprocess's Connection reads it: 4 bytes, or -1 and 8 past 2 GiB."""
    if length > 0x7FFFFFFF:
        return _LENGTH.pack(-1) + _LONG_LENGTH.pack(length)
    return _LENGTH.pack(length)


class Channel:
    """The worker's end: blocking sends and receives on a multiprocess Connection."""

    def __init__(self, connection: Any, threshold_bytes: int = THRESHOLD_BYTES) -> None:
        self._connection = connection
        self._main_pid = os.getpid()  # built in the main process, then handed to the worker
        self._threshold_bytes = threshold_bytes
        self._writer: SegmentWriter | None = None
        self._reader = SegmentReader()
        self._poller: select.poll | None = None  # made in the worker: a poll object is not inherited

    def send(self, message: object) -> None:
        writer = self._own_writer()
        notice = notice_for_peer(self._reader, writer)
        try:
            for frame in [*(encode(notice) if notice else ()), *encode(message, writer)]:
                self._connection.send_bytes(frame)
        except (OSError, EOFError) as error:
            raise ChannelClosed(str(error)) from None

    def readable(self) -> bool:
        """Whether a message has (begun to) come, so that recv() would not block. One poll object
        kept for the channel: the Connection's own poll(0) builds a selector at every call (about
        ten times the syscall), and a busy-polling worker asks this in a loop."""
        try:
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self._connection.fileno(), select.POLLIN)
            return bool(self._poller.poll(0))
        except (OSError, EOFError, ValueError):
            return True  # recv() raises ChannelClosed at once

    def recv(self) -> Any:
        while True:
            try:
                first = self._connection.recv_bytes()
                buffers = [self._connection.recv_bytes() for _ in range(buffer_count(first))]
            except (OSError, EOFError) as error:
                raise ChannelClosed(str(error) or "end of stream") from None
            message = decode(first, buffers, self._reader)
            if not isinstance(message, SegmentNotice):
                return message
            apply_notice(message, self._reader, self._own_writer())

    def _own_writer(self) -> SegmentWriter:
        if self._writer is None:  # in the worker: its own pid names its segments
            prefix = segment_prefix(self._main_pid, os.getpid(), "w")
            self._writer = SegmentWriter(prefix, self._threshold_bytes)
        return self._writer


def _uncounted(direction: str, path: str, nbytes: int) -> None:
    pass


class MainChannel(asyncio.BufferedProtocol):
    """The main process's end, as an asyncio protocol: `on_message` gets each decoded message,
    `on_closed` is called once when the worker's end closes. Given the worker's pid, arrays past
    the threshold go in segments named for it; `count_bytes(direction, path, nbytes)` hears of
    every tensor byte sent ("to_worker") and received ("from_worker"), by path. Channels that share
    a `directory` forward views of each other's workers' segments instead of copying them."""

    def __init__(
        self,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
        worker_pid: int | None = None,
        count_bytes: Callable[[str, str, int], None] = _uncounted,
        threshold_bytes: int = THRESHOLD_BYTES,
        directory: SegmentDirectory | None = None,
    ) -> None:
        self._on_message = on_message
        self._count_bytes = count_bytes
        self._writer: SegmentWriter | None = None
        if worker_pid is not None:
            prefix = segment_prefix(os.getpid(), worker_pid, "m")
            self._writer = SegmentWriter(prefix, threshold_bytes, self._counter("to_worker"), directory)
        self._reader = SegmentReader(self._counter("from_worker"), directory)
        self._on_closed = on_closed
        self._transport: asyncio.WriteTransport | None = None
        self.closed = False
        self._prefix = bytearray(_LENGTH.size)
        self._target: bytearray = self._prefix  # what the next bytes fill: a prefix or a frame
        self._filled = 0
        self._long_prefix = False
        self._frames: list[bytearray] = []
        self._expected = 1  # frames making up the message being read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._writer is not None:  # the worker can view none of them any more
            self._writer.close()
        self._reader.close()
        self._on_closed()

    def send(self, message: object) -> None:
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ChannelClosed("the worker's channel is closed")
        notice = notice_for_peer(self._reader, self._writer)
        frames = [*(encode(notice) if notice else ()), *encode(message, self._writer)]
        for frame in frames:
            size = len(frame) if isinstance(frame, bytes) else frame.nbytes
            if size < IN_BAND_LIMIT_BYTES:
                # One write per small frame: a prefix written alone wakes the worker to read 4 bytes,
                # then again for the frame (two context switches per batch instead of one).
                self._transport.write(length_prefix(size) + frame)
            else:
                self._transport.write(length_prefix(size))
                self._transport.write(frame)
        self._count_bytes("to_worker", "socket", sum(memoryview(frame).nbytes for frame in frames))

    def _counter(self, direction: str) -> CountBytes:
        return lambda path, nbytes: self._count_bytes(direction, path, nbytes)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._target)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled == len(self._target):
            self._advance()

    def _advance(self) -> None:
        self._filled = 0
        if self._target is not self._prefix:  # a whole frame arrived
            self._frames.append(self._target)
            self._target = self._prefix
            self._deliver_if_complete()
            return
        if self._long_prefix:
            (length,) = _LONG_LENGTH.unpack(self._prefix)
            self._long_prefix, self._prefix = False, bytearray(_LENGTH.size)
        else:
            (length,) = _LENGTH.unpack(self._prefix)
            if length == -1:
                self._long_prefix, self._prefix = True, bytearray(_LONG_LENGTH.size)
                self._target = self._prefix
                return
        self._target = bytearray(length)
        if length == 0:
            self._advance()

    def _deliver_if_complete(self) -> None:
        try:
            if len(self._frames) == 1:
                self._expected = 1 + buffer_count(self._frames[0])
            if len(self._frames) < self._expected:
                return
            first, *buffers = self._frames
            self._frames = []
            self._count_bytes("from_worker", "socket", sum(len(frame) for frame in (first, *buffers)))
            message = decode(first, buffers, self._reader)
            if isinstance(message, SegmentNotice):
                apply_notice(message, self._reader, self._writer)
                return
        except Exception as error:  # garbage, or a class the main process cannot import: cut it off
            log.error(
                "a worker sent a message that cannot be read (%s: %s); closing its channel", type(error).__name__, error
            )
            self._frames = []
            if self._transport is not None:
                self._transport.close()
            return
        self._on_message(message)


async def connect(
    sock: socket.socket,
    on_message: Callable[[Any], None],
    on_closed: Callable[[], None],
    worker_pid: int | None = None,
    count_bytes: Callable[[str, str, int], None] = _uncounted,
    threshold_bytes: int = THRESHOLD_BYTES,
    directory: SegmentDirectory | None = None,
) -> MainChannel:
    """Wrap the main end of a worker's socket in a MainChannel on the running loop."""
    _, protocol = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: MainChannel(on_message, on_closed, worker_pid, count_bytes, threshold_bytes, directory), sock=sock
    )
    return protocol
