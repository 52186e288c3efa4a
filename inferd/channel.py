"""Main<->worker transport: starting a worker process and moving framed messages to and from it.

Protocol: every message is one pickled frame (protocol 5) followed by one frame per numpy buffer,
sent out of band so tensor bytes are written straight from the array, and arrays that arrive are
read-only views of the received bytes (no copy beyond the pipe).
A frame's first 8 bytes give the number of buffer frames that follow.
Workers are started with the `forkserver` context: forked from a single-threaded server process
(never from the main process, which runs threads and an event loop). The server imports torch once
(the main process never does), so starting or replacing a worker costs a fork and its model load,
not a fresh interpreter's seconds of importing torch. Importing torch starts no thread pool; each
worker pins itself and sizes torch's pools after the fork, before any of them starts.

This is the only module that imports multiprocess.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

import multiprocess

_COUNT = struct.Struct("<Q")
PRELOAD = ["torch", "inferd.worker", "inferd.runners"]  # imported once, in the fork server


class ChannelClosed(Exception):
    """The other end has gone: the worker exited, or the main process died."""


class Channel:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def fileno(self) -> int:
        return int(self._connection.fileno())

    def send(self, message: object) -> None:
        buffers: list[pickle.PickleBuffer] = []
        frame = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
        try:
            self._connection.send_bytes(_COUNT.pack(len(buffers)) + frame)
            for buffer in buffers:
                self._connection.send_bytes(buffer.raw())
        except (OSError, EOFError) as error:
            raise ChannelClosed(str(error)) from None

    def recv(self) -> Any:
        try:
            frame = self._connection.recv_bytes()
            (count,) = _COUNT.unpack_from(frame)
            buffers = [self._connection.recv_bytes() for _ in range(count)]
        except (OSError, EOFError) as error:
            raise ChannelClosed(str(error) or "end of stream") from None
        return pickle.loads(memoryview(frame)[_COUNT.size :], buffers=buffers)

    def poll(self, timeout_s: float = 0.0) -> bool:
        return bool(self._connection.poll(timeout_s))

    def close(self) -> None:
        self._connection.close()


def spawn_process(target: Callable[..., Any], args: tuple[Any, ...], name: str) -> tuple[Any, Channel]:
    """Start `target(*args, worker_end)` in a fresh interpreter; return (process, main's end)."""
    context = multiprocess.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    main_end, worker_end = context.Pipe(duplex=True)
    process = context.Process(target=target, args=(*args, Channel(worker_end)), name=name, daemon=False)
    process.start()
    worker_end.close()  # the child holds its own copy; ours must close so EOF is seen when it dies
    return process, Channel(main_end)
