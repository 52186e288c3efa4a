"""Waiting on a model for a client that may leave: a queued request whose client hung up is never
computed. When the client leaves, the request's own task is cancelled, so the wait on the batcher
ends and the batcher withdraws the request from its queue (a batch already running finishes; its
answer for this request is dropped).

inferd's connections (`inferd.connections`) put a `ClientWatch` in each request's scope and tell
it when the connection is lost, at no cost per request. Elsewhere (another ASGI server), a watcher
task per request waits for the `http.disconnect` message that follows the body.
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


CLIENT_WATCH = "inferd.client_watch"  # the scope key


class ClientWatch:
    """One request's connection, as its waits see it: `client_left` cancels every task waiting."""

    def __init__(self, resume_reading: Callable[[], None]) -> None:
        self.gone = False
        self._resume_reading = resume_reading  # a paused connection would not see its client leave
        self._waiting: set[asyncio.Task[Any]] = set()

    def client_left(self) -> None:
        self.gone = True
        for task in self._waiting:
            task.cancel()

    def watch(self, task: asyncio.Task[Any]) -> _Registered:
        if self.gone:
            task.cancel()
        self._resume_reading()
        self._waiting.add(task)
        return _Registered(self, task)


class _Registered:
    def __init__(self, watch: ClientWatch, task: asyncio.Task[Any]) -> None:
        self._watch = watch
        self._task = task

    @property
    def client_left(self) -> bool:
        return self._watch.gone

    def stop(self) -> None:
        self._watch._waiting.discard(self._task)


async def unless_client_leaves(
    receive: Receive, work: Awaitable[T], scope: MutableMapping[str, Any] | None = None
) -> T:
    """`work`'s result, or ClientGone (499) as soon as the client disconnects."""
    task = asyncio.current_task()
    assert task is not None
    watch = scope.get(CLIENT_WATCH) if scope is not None else None
    watcher: _Watcher | _Registered = _Watcher(receive, task) if watch is None else watch.watch(task)
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
