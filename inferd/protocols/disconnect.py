"""Waiting on a model for a client that may leave: a queued request whose client hung up is never
computed. Once the body has been read, the next ASGI message a request can get is
`http.disconnect`; one watcher task per request waits for it and cancels the request's own task,
so the wait on the batcher ends and the batcher withdraws the request from its queue (a batch
already running finishes; its answer for this request is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from inferd.errors import ClientGone

T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone (499) as soon as the client disconnects."""
    task = asyncio.current_task()
    assert task is not None
    watcher = _Watcher(receive, task)
    try:
        return await work
    except asyncio.CancelledError:
        if not watcher.client_left:
            raise  # cancelled from elsewhere (shutdown): not ours to turn into an answer
        if sys.version_info >= (3, 11):
            task.uncancel()  # this task goes on to answer: it is no longer being cancelled
        raise ClientGone("the client disconnected before its answer was ready") from None
    finally:
        watcher.stop()


class _Watcher:
    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self.client_left = False
        self._receive = receive
        self._task = task
        self._watching = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        with contextlib.suppress(Exception):  # a receive channel that fails tells nothing
            while (await self._receive())["type"] != "http.disconnect":
                pass
            self.client_left = True
            self._task.cancel()

    def stop(self) -> None:
        self._watching.cancel()
