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
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_COUNT = struct.Struct("<Q")
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
IN_BAND_LIMIT_BYTES = 64 * 1024  # smaller buffers are cheaper copied into the pickle than framed


class ChannelClosed(Exception):
    """The other end has gone: the worker exited, or the main process died."""


def encode(message: object) -> list[bytes | memoryview]:
    """A message as its frames: the pickle (with the count of buffer frames), then each buffer."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < IN_BAND_LIMIT_BYTES:
            return True
        buffers.append(raw)
        return False

    frame = pickle.dumps(message, protocol=5, buffer_callback=out_of_band)
    return [_COUNT.pack(len(buffers)) + frame, *buffers]


def decode(first: bytes | bytearray, buffers: list[Any]) -> Any:
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

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def send(self, message: object) -> None:
        try:
            for frame in encode(message):
                self._connection.send_bytes(frame)
        except (OSError, EOFError) as error:
            raise ChannelClosed(str(error)) from None

    def recv(self) -> Any:
        try:
            first = self._connection.recv_bytes()
            buffers = [self._connection.recv_bytes() for _ in range(buffer_count(first))]
        except (OSError, EOFError) as error:
            raise ChannelClosed(str(error) or "end of stream") from None
        return decode(first, buffers)


class MainChannel(asyncio.BufferedProtocol):
    """The main process's end, as an asyncio protocol: `on_message` gets each decoded message,
    `on_closed` is called once when the worker's end closes."""

    def __init__(self, on_message: Callable[[Any], None], on_closed: Callable[[], None]) -> None:
        self._on_message = on_message
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
        self._on_closed()

    def send(self, message: object) -> None:
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ChannelClosed("the worker's channel is closed")
        for frame in encode(message):
            size = len(frame) if isinstance(frame, bytes) else frame.nbytes
            if size < IN_BAND_LIMIT_BYTES:
                # One write per small frame: a prefix written alone wakes the worker to read 4 bytes,
                # then again for the frame (two context switches per batch instead of one).
                self._transport.write(length_prefix(size) + frame)
            else:
                self._transport.write(length_prefix(size))
                self._transport.write(frame)

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
            message = decode(first, buffers)
        except Exception as error:  # garbage, or a class the main process cannot import: cut it off
            log.error(
                "a worker sent a message that cannot be read (%s: %s); closing its channel", type(error).__name__, error
            )
            self._frames = []
            if self._transport is not None:
                self._transport.close()
            return
        self._on_message(message)


async def connect(sock: socket.socket, on_message: Callable[[Any], None], on_closed: Callable[[], None]) -> MainChannel:
    """Wrap the main end of a worker's socket in a MainChannel on the running loop."""
    _, protocol = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: MainChannel(on_message, on_closed), sock=sock
    )
    return protocol
