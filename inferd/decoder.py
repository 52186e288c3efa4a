"""Large JSON bodies, decoded in a process of their own so that no parse stalls the event loop.

orjson holds the GIL for a whole parse (a 14 MiB object of 1.2 M keys takes about 0.4 s, 200,000
v2 inputs 0.65 s), so a decode thread beside the loop cannot help: every other request, /healthz
included, would wait. Bodies past `DECODE_IN_PROCESS_BYTES` are decoded by the decoder process
instead: the same decode function, checks included, runs there, and what comes back is cheap to
take in: arrays travel as out-of-band buffers, a handler's items as one packed blob
(`messages.PackedItems`) that only its worker unpickles, and a refusal as its status and message.

Protocol, over the decoder's channel (the workers' framing, `inferd.channel`):
    main -> decoder   Decode(call_id, function, args)   function: a module-level callable or a partial of one
    decoder -> main   Decoded(call_id, value) or Refused(call_id, status, message, headers)
Calls are answered one at a time, in order. The decoder exits with the main process. One that
dies (a body that exhausts its memory, a kill) fails the calls it held with 413 and is started
anew for the next call; its exit is one log line.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from setproctitle import setproctitle

from inferd import channel as channels
from inferd import process
from inferd.errors import PayloadTooLarge, RequestError
from inferd.segments import sweep_worker

log = logging.getLogger(__name__)

T = TypeVar("T")
# Past this a parse of the worst JSON shape (many small objects: about 55 ms per MiB here) could
# stall the loop for more than a few milliseconds; below it the trip to the process costs more.
DECODE_IN_PROCESS_BYTES = 128 * 1024
INTERNAL_ERROR = 500


@dataclass(frozen=True)
class Decode:
    call_id: int
    function: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Decoded:
    call_id: int
    value: Any


@dataclass(frozen=True)
class Refused:
    call_id: int
    status: int
    message: str
    headers: dict[str, str] | None


class DecodeRefused(RequestError):
    """A refusal from the decoder process, with the status its decode function gave it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None) -> None:
        super().__init__(message, headers)
        self.status = status


class Decoder:
    """The main process's handle on the decoder process, started on first use."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._channel: channels.MainChannel | None = None
        self._process: process.WorkerProcess | None = None
        self._starting = asyncio.Lock()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in the decoder process; its RequestError is raised here as it was there."""
        channel = await self._started()
        call_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = answer
        try:
            channel.send(Decode(call_id, function, tuple(map(_out_of_band, args))))
            return await answer  # type: ignore[no-any-return]
        finally:
            self._calls.pop(call_id, None)

    async def start(self) -> None:
        await self._started()

    async def _started(self) -> channels.MainChannel:
        async with self._starting:
            if self._channel is None or self._channel.closed:
                self._channel = await self._start()
            return self._channel

    async def _start(self) -> channels.MainChannel:
        started = await asyncio.to_thread(process.start_worker, decoder_main, (os.getpid(),), "inferd-decoder")
        self._process, main_socket = started
        return await channels.connect(main_socket, self._on_message, self._on_closed)

    def _on_message(self, message: Decoded | Refused) -> None:
        answer = self._calls.get(message.call_id)
        if answer is None or answer.done():
            return  # its request was cancelled (the client left) while it was decoded
        if isinstance(message, Decoded):
            answer.set_result(message.value)
        else:
            answer.set_exception(DecodeRefused(message.status, message.message, message.headers))

    def _on_closed(self) -> None:
        held = [answer for answer in self._calls.values() if not answer.done()]
        exited = self._process
        self._process = None
        if exited is not None:
            exited.kill()
            asyncio.get_running_loop().run_in_executor(None, _log_exit, exited, len(held))
        for answer in held:
            answer.set_exception(
                PayloadTooLarge("the JSON decoder stopped while decoding this body; send less, or send it as binary")
            )

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.reap()
            self._process = None


def _out_of_band(argument: Any) -> Any:
    """A body as a PickleBuffer, so the channel sends it as its own frame instead of copying it
    into the pickle (the decode function then gets a bytearray)."""
    return pickle.PickleBuffer(argument) if isinstance(argument, bytes) else argument


def _log_exit(exited: process.WorkerProcess, held: int) -> None:
    code = exited.reap()
    sweep_worker(os.getpid(), exited.pid)  # the shared-memory segments it had sent answers in
    log.warning("the JSON decoder (pid %d) exited (%s) holding %d body(ies); it restarts on the next",
                exited.pid, code, held)  # fmt: skip


def decoder_main(main_pid: int, channel: channels.Channel) -> None:
    """Entry point of the decoder process."""
    from inferd.worker import exit_with_main_process

    setproctitle("inferd: json decoder")
    exit_with_main_process(main_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops it (see worker_main)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            call = channel.recv()
        except channels.ChannelClosed:
            return
        channel.send(_answer(call))


def _answer(call: Decode) -> Decoded | Refused:
    try:
        return Decoded(call.call_id, call.function(*call.args))
    except RequestError as error:
        return Refused(call.call_id, error.status, str(error), error.headers or None)
    except Exception as error:  # a bug in a decode function: the caller gets a 500, the log one line
        log.error("decoding failed: %s: %s", type(error).__name__, error)
        return Refused(call.call_id, INTERNAL_ERROR, "the body could not be decoded (an internal error)", None)
