"""A worker's serving loop for a handler whose `predict` is `async def`: several batches at once,
each a task on the runner's event loop.

Protocol: as in worker.py, except that batches are answered in the order they finish:
    main -> worker   Batch (at most the model's max_concurrency unanswered at a time)
    worker -> main   BatchDone, naming the batch_id it answers
    main -> worker   Stop: the batches in flight finish and are answered, then the worker exits 0
An end-of-stream on the channel ends the loop at once (the main process is gone). A reader thread
turns the blocking channel into callbacks on the loop; answers are sent from the loop's thread
under the send lock that the stats thread shares.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from inferd.async_runner import AsyncHandlerRunner
from inferd.channel import Channel, ChannelClosed
from inferd.messages import Batch, BatchDone, Payload, RequestFailure, Stop

log = logging.getLogger(__name__)

Finish = Callable[[int, list[Payload | RequestFailure], float], BatchDone]  # batch_id, results, compute_s


def serve_concurrently(runner: AsyncHandlerRunner, channel: Channel, send_lock: threading.Lock, finish: Finish) -> None:
    runner.loop.run_until_complete(_serve(runner, channel, send_lock, finish))


async def _serve(runner: AsyncHandlerRunner, channel: Channel, send_lock: threading.Lock, finish: Finish) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    threading.Thread(target=_read_into, args=(channel, loop, inbox), name="inferd-inbox", daemon=True).start()
    running: set[asyncio.Task[None]] = set()
    while True:
        message = await inbox.get()
        if message is None:
            log.info("the main process closed the channel; exiting")
            return
        if isinstance(message, Stop):
            log.info("stopping: %s (after the %d batch(es) in flight)", message.reason, len(running))
            await asyncio.gather(*running)
            return
        if isinstance(message, Batch):
            task = loop.create_task(_answer(message, runner, channel, send_lock, finish))
            running.add(task)
            task.add_done_callback(running.discard)


async def _answer(
    batch: Batch, runner: AsyncHandlerRunner, channel: Channel, send_lock: threading.Lock, finish: Finish
) -> None:
    started = time.perf_counter()
    results = await runner.run_batch_async(batch.payloads)
    done = finish(batch.batch_id, results, time.perf_counter() - started)
    with send_lock:
        try:
            channel.send(done)
        except ChannelClosed:
            pass  # the main process is gone: the reader's end-of-stream ends the loop


def _read_into(channel: Channel, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]) -> None:
    while True:
        try:
            message = channel.recv()
        except ChannelClosed:
            message = None
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, message)
        except RuntimeError:  # the loop has closed: the worker is exiting
            return
        if message is None:
            return
