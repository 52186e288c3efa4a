"""A model's queue ordered by priority level, FIFO within a level, with promotion so that nothing
starves (pure data structure: no event loop, no clock of its own).

Order: promoted items first, then level 1, 2, ... `levels` (inferd/priority.py numbers them). An
item that has waited `promote_after_s` goes ahead of every item that has not: `promote(now)` moves
such items, oldest first, to the promoted deque. So a high-priority item waits only behind older
ones of its level or above and behind the promoted; a low one waits at most about the promotion
limit plus what was promoted before it.

Invariants: every item is in exactly one deque, the one its `level` names (0 once promoted); each
deque is in arrival order (retried items go back to the heads of theirs, being older than
anything there); `len` counts every item. With every item at one level (no request gave a
priority) each operation costs what the plain deque did, plus one pass over the few levels.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

PROMOTED = 0


class Queued(Protocol):
    level: int  # 1..levels as asked for; PROMOTED once it has waited past the limit

    @property
    def arrived(self) -> float: ...


T = TypeVar("T", bound=Queued)


class PriorityQueue(Generic[T]):
    def __init__(self, levels: int, promote_after_s: float) -> None:
        self._levels: list[deque[T]] = [deque() for _ in range(levels + 1)]  # [0]: the promoted
        self._promote_after_s = promote_after_s
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """Every item, in the order they are served."""
        return itertools.chain.from_iterable(self._levels)

    def count_at(self, level: int) -> int:
        """How many items wait at `level` (PROMOTED: those promoted)."""
        return len(self._levels[level])

    def head(self) -> T:
        for queue in self._levels:
            if queue:
                return queue[0]
        raise IndexError("head of an empty PriorityQueue")

    def append(self, item: T) -> None:
        self._levels[item.level].append(item)
        self._size += 1

    def popleft(self) -> T:
        for queue in self._levels:
            if queue:
                self._size -= 1
                return queue.popleft()
        raise IndexError("pop from an empty PriorityQueue")

    def requeue_front(self, items: Sequence[T]) -> None:
        """Put back items taken from the head (a batch whose worker was lost), in their order."""
        for item in reversed(items):
            self._levels[item.level].appendleft(item)
        self._size += len(items)

    def remove(self, item: T) -> bool:
        """Take out one item wherever it is (cancelled, expired); False if it is not queued."""
        try:
            self._levels[item.level].remove(item)
        except ValueError:
            return False
        self._size -= 1
        return True

    def remove_taken(self, taken: Iterable[T]) -> None:
        """Take out items that are queued, given in queue order (a batch just formed): each is
        usually the head of its level, so this is a popleft per item."""
        stray: set[int] = set()
        for item in taken:
            queue = self._levels[item.level]
            if queue and queue[0] is item:
                queue.popleft()
            else:
                stray.add(id(item))
            self._size -= 1
        if stray:
            for index, queue in enumerate(self._levels):
                self._levels[index] = deque(item for item in queue if id(item) not in stray)

    def clear(self) -> None:
        for queue in self._levels:
            queue.clear()
        self._size = 0

    def promote(self, now: float) -> int:
        """Move every item that has waited `promote_after_s` by `now` ahead of the rest, oldest
        first; answer how many moved."""
        if sum(1 for queue in self._levels if queue) < 2:
            return 0  # one level alone is in arrival order already: promotion changes nothing
        waiting = [queue for queue in self._levels[1:] if queue]
        cutoff = now - self._promote_after_s
        moved = 0
        while (oldest := _oldest_due(waiting, cutoff)) is not None:
            item = oldest.popleft()
            item.level = PROMOTED
            self._levels[PROMOTED].append(item)
            moved += 1
        return moved


def _oldest_due(queues: list[deque[T]], cutoff: float) -> deque[T] | None:
    """The queue whose head arrived first, if that head arrived at or before `cutoff`."""
    oldest: deque[T] | None = None
    for queue in queues:
        if queue and queue[0].arrived <= cutoff and (oldest is None or queue[0].arrived < oldest[0].arrived):
            oldest = queue
    return oldest
