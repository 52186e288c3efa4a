"""The worker side of a handler whose `predict` is a generator function: each yield is a list with
one chunk per item of the call, and each request gets its own items' chunks as they are made.

Streamed requests (StreamPredict) that arrive between two steps join one new `predict` call (a
group). Each step advances every group by one yield and answers one Chunk per request of the
group; a group whose generator is exhausted ends its requests (finish_reason "stop"). Invariants:
- a cancelled request (its client left, its deadline passed) leaves its group at once; once no
  request is left in a group, its generator is closed (GeneratorExit at the yield it waits at);
- a generator that raises before its first yield while holding several requests is run again for
  each request apart, so only the request whose data broke it fails, as a batch's would; one that
  raises later ends each of its requests with the failure;
- a non-streamed request (a Batch) runs its generator to the end between two steps and is
  answered with each item's chunks gathered (HandlerRunner).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from inferd.messages import Batch, BatchDone, Chunk, Payload, RequestFailure, StreamPredict
from inferd.runners import HandlerRunner, ModelBroken, caller_message, traceback_line, values_and_parameters

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One streamed request in a group: its items are `start` to `start + items` of the call's."""

    sequence_id: int
    payload: Payload
    items: int
    start: int = 0


@dataclass
class Group:
    chunks: Generator[list[Any], None, None]
    members: list[Member]
    yielded: int = 0


class HandlerStreams:
    def __init__(self, runner: HandlerRunner) -> None:
        self.runner = runner
        self.inputs, self.outputs = runner.inputs, runner.outputs
        self._joining: list[Member] = []
        self._groups: list[Group] = []

    @property
    def running(self) -> bool:
        return bool(self._joining or self._groups)

    def start(self, message: StreamPredict) -> Chunk | None:
        self._joining.append(Member(message.sequence_id, message.payload, len(message.payload)))
        return None

    def cancel(self, sequence_id: int) -> None:
        self._joining = [m for m in self._joining if m.sequence_id != sequence_id]
        for group in list(self._groups):
            group.members = [m for m in group.members if m.sequence_id != sequence_id]
            if not group.members:
                self._close(group)

    def answer_batch(self, batch: Batch) -> BatchDone:
        started = time.perf_counter()
        results = self.runner.run_batch(batch.payloads)
        return BatchDone(batch.batch_id, results, time.perf_counter() - started)

    def steps(self) -> Iterator[list[Chunk]]:
        yield self.step()

    def step(self) -> list[Chunk]:
        """One yield of every group, the requests that joined since the last step in a new one."""
        chunks: list[Chunk] = []
        if self._joining:
            chunks += self._open(self._joining)
            self._joining = []
        for group in list(self._groups):
            chunks += self._advance(group)
        return chunks

    def _open(self, members: list[Member]) -> list[Chunk]:
        """A new group over `members`' items; a request whose items do not decode fails alone."""
        decoded, refused, start = [], [], 0
        for member in members:
            try:
                items, parameters = self.runner.decoded([values_and_parameters(member.payload)])
            except Exception as error:
                refused.append(Chunk(member.sequence_id, failure=_failure(error)))
                continue
            member.start = start
            start += len(items)
            decoded.append((member, items, parameters))
        if decoded:
            items = [item for _, values, _ in decoded for item in values]
            parameters = [given for _, _, values in decoded for given in values]
            chunks = self.runner.chunks(items, parameters)
            self._groups.append(Group(chunks, [member for member, _, _ in decoded]))
        return refused

    def _advance(self, group: Group) -> list[Chunk]:
        try:
            outputs = next(group.chunks)
        except StopIteration:
            self._groups.remove(group)
            return [Chunk(m.sequence_id, finish_reason="stop") for m in group.members]
        except Exception as error:
            return self._failed(group, error)
        group.yielded += 1
        return [Chunk(m.sequence_id, outputs=outputs[m.start : m.start + m.items]) for m in group.members]

    def _failed(self, group: Group, error: Exception) -> list[Chunk]:
        self._groups.remove(group)
        broken = isinstance(error, ModelBroken)  # the model's fault whatever the input
        if group.yielded == 0 and len(group.members) > 1 and not broken:
            log.info("a predict of %d requests raised %s; running them apart", len(group.members), error)
            return [chunk for member in group.members for chunk in self._open([member])]
        log.log(logging.WARNING if broken else logging.INFO, "a streamed predict over %d request(s) raised: %s",
                len(group.members), traceback_line(error))  # fmt: skip
        failure = _failure(error, bad_input=not broken)
        return [Chunk(m.sequence_id, failure=failure) for m in group.members]

    def _close(self, group: Group) -> None:
        self._groups.remove(group)
        try:
            group.chunks.close()
        except Exception as error:  # the handler's own clean-up raised: its requests are gone anyway
            log.warning("closing a streamed predict raised: %s", traceback_line(error))


def _failure(error: Exception, bad_input: bool = True) -> RequestFailure:
    return RequestFailure(type(error).__name__, caller_message(error), bad_input, traceback_line(error))
