"""The main-process side of a generative model: a bounded queue of sequences and their placement
on workers, each worker running at most `max_running` sequences at once (its continuous batch).
The same scheduler carries the streamed requests of a handler whose predict yields: there a
request is one sequence that takes one slot per item it carries.

Invariants:
- queued sequences start by priority, FIFO within a level, a long-waiting one promoted (as a
  batched model's requests: inferd/priority_queue.py);
- a sequence is queued, or running on exactly one worker, or ended; `Stream` is its chunks as an
  async iterator, and every stream ends with one final chunk (finish_reason or failure), also
  when its worker dies (a sequence that delivered nothing yet is retried once, like a batch),
  when its deadline passes, or when the server stops;
- a stream closed by its reader (the client left) is withdrawn from the queue, or cancelled in
  its worker, which frees its slot at the next step;
- nothing here knows HTTP: fronts turn failures into answers (`failure_error`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferd.batching import ModelError
from inferd.channel import ChannelClosed
from inferd.errors import BadRequest, ModelFailed, ModelUnavailable, QueueFull, RequestError, RequestTimedOut
from inferd.messages import Cancel, Chunk, Chunks, Generate, RequestFailure, Sampling, StreamPredict
from inferd.priority import PriorityPolicy
from inferd.priority_queue import PriorityQueue
from inferd.supervisor import READY, Supervisor, WorkerHandle

log = logging.getLogger(__name__)

DEADLINE = "DeadlineExceeded"
LOST = "WorkerLost"
NOT_LOADED = "ModelNotLoaded"
NOT_STREAMED = "NotStreamed"  # a streamed request to a model whose predict does not yield


@dataclass(frozen=True)
class GenerationPolicy:
    max_running: int  # sequences per worker: the model's max_batch_size
    max_queue_size: int
    deadline_s: float  # the model's request_timeout_ms: a whole generation must end by then
    priority: PriorityPolicy = field(default_factory=PriorityPolicy)


class GenerationObserver(Protocol):
    def first_token(self, wait_s: float, prompt_tokens: int) -> None: ...

    def sequence_done(self, tokens: int, decode_s: float) -> None: ...

    def request_cancelled(self) -> None: ...


class Stream:
    """One request's chunks as they come, ending with its final chunk."""

    def __init__(self, scheduler: Scheduler, message: Generate | StreamPredict, level: int = 0, slots: int = 1) -> None:
        self.message = message
        self.level = level  # its place in the queue (priority_queue.py)
        self.slots = slots  # of its worker's max_running: a handler request's items
        self.worker: WorkerHandle | None = None
        self.retried = False
        self.delivered = 0  # chunks put in the queue: a retry is safe only while none was
        self.tokens = 0
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._scheduler = scheduler
        self._chunks: asyncio.Queue[Chunk] = asyncio.Queue()
        self._ended = False

    @property
    def sequence_id(self) -> int:
        return self.message.sequence_id

    @property
    def arrived(self) -> float:
        return self.submitted_at

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Chunk:
        if self._ended:
            raise StopAsyncIteration
        chunk = await self._chunks.get()
        self._ended = chunk.final
        return chunk

    def push(self, chunk: Chunk) -> None:
        self.delivered += 1
        self.tokens += chunk.tokens
        if chunk.tokens and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self._chunks.put_nowait(chunk)

    def close(self) -> None:
        """The reader is done with it: stop it wherever it is (a no-op once it ended)."""
        self._scheduler.withdraw(self)


class Scheduler:
    def __init__(
        self, model: str, policy: GenerationPolicy, supervisor: Supervisor, observer: GenerationObserver
    ) -> None:
        self.model = model
        self.policy = policy
        self._supervisor = supervisor
        self._observer = observer
        self._queue: PriorityQueue[Stream] = PriorityQueue(policy.priority.levels, policy.priority.promote_after_s)
        self._open: dict[int, Stream] = {}  # queued or running, by sequence id
        self._running: dict[WorkerHandle, set[int]] = {}
        self._ids = itertools.count(1)
        self._drained: asyncio.Future[None] | None = None
        self._successor: Callable[[], Scheduler | None] | None = None
        supervisor.on_chunks = self._on_chunks
        supervisor.on_worker_gone = self._on_worker_gone
        # Told of each sequence before it queues; may refuse it (a RequestError), e.g. an unloaded model.
        self.on_request: Callable[[], None] = lambda: None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running_sequences(self) -> int:
        return sum(len(ids) for ids in self._running.values())

    def submit(
        self, prompt: str | list[dict[str, str]], max_tokens: int, max_prompt_tokens: int,
        sampling: Sampling, stop: tuple[str, ...], priority: int = 0,
    ) -> Stream:  # fmt: skip
        """Queue one sequence; QueueFull or ModelUnavailable at once where it cannot be.
        `priority` is checked already (priority.py): 0 is the model's default."""
        return self.open(
            lambda sequence_id: Generate(sequence_id, prompt, max_tokens, max_prompt_tokens, sampling, stop),
            priority=priority,
        )

    def open(self, make: Callable[[int], Generate | StreamPredict], slots: int = 1, priority: int = 0) -> Stream:
        """Queue the message `make` builds for a new sequence id, taking `slots` of a worker's
        max_running; QueueFull or ModelUnavailable at once where it cannot be."""
        if self._successor is not None:  # retired: a request that still held this generation
            successor = self._successor()
            if successor is None:
                raise ModelUnavailable(f"model {self.model!r} was stopped or removed")
            return successor.open(make, slots, priority)
        self.on_request()
        reason = self._supervisor.unavailable_reason
        if reason and not self._supervisor.ready_count:
            raise ModelUnavailable(f"model {self.model!r} is unavailable: {reason}")
        if len(self._queue) >= self.policy.max_queue_size:
            raise QueueFull(
                f"model {self.model!r} has {len(self._queue)} sequences queued (max_queue_size); retry later",
                headers={"Retry-After": "1"},
            )
        stream = Stream(self, make(next(self._ids)), self.policy.priority.level(priority), slots)
        stream.timer = asyncio.get_running_loop().call_later(self.policy.deadline_s, self._expire, stream)
        self._open[stream.sequence_id] = stream
        self._queue.append(stream)
        self.wake()
        return stream

    def wake(self) -> None:
        """Place queued sequences on workers with a free slot, least loaded first."""
        if self._queue:
            self._queue.promote(time.monotonic())
        while self._queue:
            worker = self._free_worker(self._queue.head().slots)
            if worker is None:
                return
            self._start_on(worker, self._queue.popleft())

    def _free_worker(self, slots: int) -> WorkerHandle | None:
        free = [
            h for h in self._supervisor.handles.values()
            if h.state == READY and self._load(h) + slots <= self.policy.max_running
        ]  # fmt: skip
        return min(free, key=self._load) if free else None

    def _load(self, worker: WorkerHandle) -> int:
        return sum(self._open[i].slots for i in self._running.get(worker, ()) if i in self._open)

    def _start_on(self, worker: WorkerHandle, stream: Stream) -> None:
        stream.worker = worker
        self._running.setdefault(worker, set()).add(stream.sequence_id)
        try:
            assert worker.channel is not None
            worker.channel.send(stream.message)
        except ChannelClosed:
            pass  # the worker is going: its exit retries or fails what it held

    def withdraw(self, stream: Stream) -> None:
        if stream.sequence_id not in self._open:
            return
        self._observer.request_cancelled()
        self._cancel_in_worker(stream)
        self._end(stream)

    def _cancel_in_worker(self, stream: Stream) -> None:
        if stream.worker is None:
            self._queue.remove(stream)
            return
        try:
            assert stream.worker.channel is not None
            stream.worker.channel.send(Cancel(stream.sequence_id))
        except ChannelClosed:
            pass

    def _end(self, stream: Stream) -> None:
        self._open.pop(stream.sequence_id, None)
        if stream.worker is not None:
            self._running.get(stream.worker, set()).discard(stream.sequence_id)
        if stream.timer is not None:
            stream.timer.cancel()
        if not self._open and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.wake()

    def _expire(self, stream: Stream) -> None:
        if stream.sequence_id not in self._open:
            return
        log.info(
            "model %s: sequence %d passed its deadline (%.1f s)", self.model, stream.sequence_id, self.policy.deadline_s
        )
        self._cancel_in_worker(stream)
        stream.push(Chunk(stream.sequence_id, failure=RequestFailure(DEADLINE, self._deadline_text(), False)))
        self._end(stream)

    def _deadline_text(self) -> str:
        return f"the generation did not end within {self.policy.deadline_s:g} s (request_timeout_ms)"

    def _on_chunks(self, worker: WorkerHandle, chunks: Chunks) -> None:
        for chunk in chunks.chunks:
            stream = self._open.get(chunk.sequence_id)
            if stream is None or stream.worker is not worker:
                continue  # cancelled, or retried elsewhere: its late chunks are dropped
            if chunk.prompt_tokens is not None and chunk.tokens:
                self._observer.first_token(time.monotonic() - stream.submitted_at, chunk.prompt_tokens)
            stream.push(chunk)
            if chunk.final:
                self._sequence_ended(stream)

    def _sequence_ended(self, stream: Stream) -> None:
        if stream.first_token_at is not None:
            self._observer.sequence_done(stream.tokens, time.monotonic() - stream.first_token_at)
        self._end(stream)

    def _on_worker_gone(self, worker: WorkerHandle) -> None:
        held = [self._open[i] for i in self._running.pop(worker, set()) if i in self._open]
        retry = [s for s in held if not s.delivered and not s.retried]
        for stream in retry:
            stream.retried, stream.worker = True, None
            self._queue.requeue_front([stream])
        if retry:
            log.warning("model %s: worker %s died; retrying %d sequence(s) once", self.model, worker.name, len(retry))
        for stream in held:
            if stream.worker is worker:
                text = f"model {self.model!r}: worker {worker.name} died during the generation"
                stream.push(Chunk(stream.sequence_id, failure=RequestFailure(LOST, text, False)))
                stream.worker = None
                self._end(stream)
        self.wake()

    def fail_queued(self, message: str) -> None:
        """End every sequence still queued with `message` (its model's workers will not come)."""
        for stream in list(self._queue):
            self._queue.remove(stream)
            stream.push(Chunk(stream.sequence_id, failure=RequestFailure(NOT_LOADED, message, False)))
            self._end(stream)

    def hand_on(self, successor: Callable[[], Scheduler | None]) -> None:
        """Retired: new sequences go to whatever `successor` gives (the name's next generation)."""
        self._successor = successor

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for every open sequence to end, then end the rest."""
        if self._open:
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._drained], timeout=timeout_s)
        for stream in list(self._open.values()):
            self._cancel_in_worker(stream)
            text = f"model {self.model!r} is stopping"
            stream.push(Chunk(stream.sequence_id, failure=RequestFailure("ServerStopping", text, False)))
            self._end(stream)


def failure_error(model: str, failure: RequestFailure) -> RequestError:
    """The HTTP error a stream's failure becomes when nothing was sent yet."""
    message = f"model {model!r}: {failure.message}"
    if failure.error_type in ("PromptTooLong", NOT_STREAMED):
        return BadRequest(failure.message)
    if failure.error_type == DEADLINE:
        return RequestTimedOut(message)
    if failure.error_type in (LOST, "ServerStopping", NOT_LOADED):
        return ModelUnavailable(message)
    error_class: Any = ModelFailed if failure.bad_input else ModelError
    return error_class(f"model {model!r} failed: {failure.error_type}: {failure.message}", detail=failure.detail)
