"""Busy polling: a process that expects its next message within a fraction of a millisecond waits
for it awake, polling, instead of asleep in the kernel.

Why: a request to a small model crosses between processes four times (client -> main -> worker ->
main -> client), and each crossing into a process that went to sleep pays for waking it: on a
virtual machine the host halts an idle CPU, and resuming it and the process (whose caches the host
gave to others meanwhile) took 50-100 us a hop on 2 cores. bench/batching.py, tiny model, one
client: p50 0.86-1.50 ms sleeping, 0.49-0.75 ms polling (the bare in-process endpoint: 0.23-0.43).

Where, each bounded by the model's `busy_poll_us` (0: never):
- the worker, after answering a batch, polls its channel for the next one (`WorkerPoll`); it keeps
  doing so only while polling pays, that is while the next batch often comes within the window.
  Under sparse traffic it sleeps, trying the window again now and then to notice a change. Only a
  worker pinned to CPUs of its own polls (`worker_window_s`);
- the main process, having sent a batch with nothing else queued, keeps its event loop turning
  for the answer during a window around the time the model's batches of that size take (at once
  for a batch shorter than half the window), so one poll window per batch however long the batch
  (`LoopSpinner`); under load the loop has work anyway, and spinning would only take CPU from it.
- a pipeline's step, as it submits a request, tells each step that takes its outputs alone when
  they are due (from its own learned batch time: `Batcher.expect`); shortly before then that
  step's idle worker gets a `HeadsUp` and polls for its batch for the lead plus the window. That
  needs no guess, so it is done on shared cores too: one bounded poll per request and step.
Both give the CPU to anything else runnable on it at every idle turn (sched_yield), so a poller
rarely delays a process that has work; what polling costs is CPU time that would have gone idle.
Under a CPU quota (a container's limit) that time is counted: set `busy_poll_us: 0` there.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferd.placement import WorkerSlot

RECENT = 16  # polls remembered
PAYING_HITS = 4  # polling goes on while at least this many of the recent polls caught a message
PROBE_EVERY = 16  # while it does not pay, one wait in this many polls anyway
# A loop turn shorter than this ran no other callback: only such a turn yields the CPU, since a
# loop with work to do would hand its CPU to another process at every turn (a pipeline's workers).
IDLE_TURN_S = 20e-6


def worker_window_s(window_s: float, slot: WorkerSlot, slots: Sequence[WorkerSlot]) -> float:
    """A worker's poll window: the model's, on CPUs no other worker is pinned to, else none. Where
    workers share cores (a pipeline's steps on every core), each poll takes turns from a neighbour
    that has work: the classify pipeline used about a tenth more CPU per image polling."""
    if not slot.cpus:
        return 0.0  # unpinned: it may run beside anyone
    mine = set(slot.cpus)
    shared = any(other != slot and mine.intersection(other.cpus) for other in slots)
    return 0.0 if shared else window_s


def poll_until(ready: Callable[[], bool], window_s: float) -> bool:
    """Whether `ready()` became true within `window_s`, asked in a loop that yields the CPU."""
    deadline = time.perf_counter() + window_s
    while not ready():
        if time.perf_counter() >= deadline:
            return False
        os.sched_yield()
    return True


class WorkerPoll:
    """Whether a worker's next wait should poll first, learned from whether recent polls caught
    their message."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._caught: deque[bool] = deque([True] * RECENT, maxlen=RECENT)  # start by trying
        self._skipped = 0
        self._told_s = 0.0  # a HeadsUp's window for the next wait

    def should_poll(self) -> bool:
        if self.window_s <= 0:
            return False
        if sum(self._caught) >= PAYING_HITS:
            return True
        self._skipped += 1
        if self._skipped >= PROBE_EVERY:
            self._skipped = 0
            return True
        return False

    def polled(self, caught: bool) -> None:
        self._caught.append(caught)

    def told(self, within_s: float) -> None:
        """A batch is due within `within_s` (a HeadsUp): the next wait polls that long, whatever
        recent polls caught, and is left out of their record (it was told, not guessed)."""
        self._told_s = within_s

    def wait(self, ready: Callable[[], bool]) -> None:
        """Poll for `ready()` first where that pays; the caller then does its blocking read."""
        if self._told_s:
            poll_until(ready, self._told_s)
            self._told_s = 0.0
        elif self.should_poll():
            self.polled(poll_until(ready, self.window_s))


class LoopSpinner:
    """Keeps the running event loop turning, without sleeping, until each watched future is done
    or its deadline passes; one task serves every watch. A turn with other work costs one more
    callback; an idle turn yields the CPU to whatever else may run on it."""

    def __init__(self) -> None:
        self._watched: dict[asyncio.Future[Any], float] = {}
        self._task: asyncio.Task[None] | None = None
        self.turns = 0  # loop turns spun, all watches together

    def watch_around(self, future: asyncio.Future[Any], expected_s: float, window_s: float) -> None:
        """Spin for `future`, expected `expected_s` from now, during a window of `window_s` that
        starts half of it before then (at once for an answer expected sooner)."""
        start_in_s = max(0.0, expected_s - window_s / 2)
        if start_in_s == 0:
            return self.watch(future, time.monotonic() + window_s)
        loop = asyncio.get_running_loop()
        loop.call_later(start_in_s, self._watch_unless_done, future, window_s)

    def _watch_unless_done(self, future: asyncio.Future[Any], window_s: float) -> None:
        if not future.done():
            self.watch(future, time.monotonic() + window_s)

    def watch(self, future: asyncio.Future[Any], deadline: float) -> None:
        """Spin until `future` is done, or `deadline` (time.monotonic()) at the latest."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._watched = {}  # a task of a loop that has closed watches nothing any more
            self._task = loop.create_task(self._spin(), name="inferd-busy-poll")
        self._watched[future] = deadline

    @property
    def watching(self) -> int:
        return len(self._watched)

    async def _spin(self) -> None:
        turned_at = time.monotonic()
        while self._watched:
            now = time.monotonic()
            for future, deadline in list(self._watched.items()):
                if future.done() or now >= deadline:
                    del self._watched[future]
            if not self._watched:
                return
            if now - turned_at < IDLE_TURN_S:  # the loop had nothing else to do: let others run
                os.sched_yield()
            self.turns += 1
            turned_at = time.monotonic()
            await asyncio.sleep(0)
