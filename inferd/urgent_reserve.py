"""Room kept for urgent requests while lower-priority ones flood the model (pure logic, no clock).

A running batch is never cut short, so an urgent request that arrives while every worker runs a
lower batch waits for the first of them to finish: up to a whole batch when the workers run in
step. "Urgent" is the highest priority level seen lately, while a lower one is seen too (PROMOTED
aside). While there is one:
- a batch led by a lower level starts only if, after it, a worker is still free or one is due to
  free within `RESERVE_SHARE` of an urgent batch's own time; otherwise it waits until one is about
  to free. So about one worker's capacity is kept for urgent work, and the workers' finishes
  spread out instead of running in step;
- a batch led by an urgent request takes lower requests along only while the batch stays within
  `FILL_SHARE` of its cost without them (a model whose cost grows with every item gets none).
Never held back: a batch while the model has nothing in flight (a worker is never kept idle for
nobody, so a one-worker model serves its flood as before), promoted requests (priority_queue.py:
low priority never starves), and everything while no two levels arrive or the batch times needed
are not measured yet (batch_cost.py).

"Lately": within `RECENT_GAPS` mean gaps between that level's arrivals, at least `MIN_RECENT_S`, so a
trickle of one request a second keeps its room as well as one of a hundred a second does. The room
is for as many urgent requests as have been in the model at once since that level last went quiet:
while that many are queued or running (one, for a client that sends one at a time), nothing more
is held back for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from inferd.batch_cost import BatchCost
from inferd.priority_queue import PROMOTED

RESERVE_SHARE = 0.25  # the longest an urgent request should wait for a worker, as a share of its batch
FILL_SHARE = 0.05  # how much slower lower requests riding along may make an urgent batch
RECENT_GAPS = 20.0
MIN_RECENT_S = 1.0
SMOOTHING = 0.05  # weight of each new gap in a level's mean gap


@dataclass
class _Arrivals:
    """One priority level's recent arrivals."""

    last: float
    items: int  # the latest request's items: an urgent batch's usual size
    gap_s: float | None = None
    together: int = 0  # the most of this level in the model at once since it last went quiet

    def add(self, now: float, items: int) -> None:
        gap_s = now - self.last
        self.gap_s = gap_s if self.gap_s is None else self.gap_s + SMOOTHING * (gap_s - self.gap_s)
        self.last, self.items = now, items

    def count_together(self, in_model: int, afresh: bool) -> None:
        self.together = in_model if afresh else max(self.together, in_model)

    def window_s(self) -> float:
        return MIN_RECENT_S if self.gap_s is None else max(MIN_RECENT_S, RECENT_GAPS * self.gap_s)

    def recent(self, now: float) -> bool:
        return now - self.last <= self.window_s()


class UrgentReserve:
    def __init__(self, cost: BatchCost, max_batch_size: int) -> None:
        self._cost = cost
        self._max_batch_size = max_batch_size
        self._arrivals: dict[int, _Arrivals] = {}

    def request_arrived(self, level: int, items: int, now: float, in_model: Callable[[], int]) -> None:
        """`in_model`: how many requests of `level` the model holds now, queued or running, this
        one included (asked only of a level that may be urgent while lower ones arrive)."""
        arrivals = self._arrivals.get(level)
        afresh = arrivals is None or not arrivals.recent(now)
        if arrivals is None:
            arrivals = self._arrivals[level] = _Arrivals(now, items)
        else:
            arrivals.add(now, items)
        urgent_level = self.urgent_level(now)
        if urgent_level is not None and level <= urgent_level:
            arrivals.count_together(in_model(), afresh)
        else:  # nothing below it to hold back: not worth counting, and one at a time till it is
            arrivals.count_together(1, afresh)

    def urgent_level(self, now: float) -> int | None:
        """The highest level (lowest number) that arrived lately, if a lower one did too."""
        if len(self._arrivals) < 2:
            return None  # the usual case: one level only, nothing to keep room for
        recent = [level for level, arrivals in self._arrivals.items() if arrivals.recent(now)]
        return min(recent) if len(recent) > 1 else None

    def yields(self, level: int, urgent_level: int | None) -> bool:
        """Whether a batch led by `level` gives way to urgent work."""
        return urgent_level is not None and level != PROMOTED and level > urgent_level

    def fill_limit(self, urgent_items: int) -> int:
        """The most items a batch whose urgent requests carry `urgent_items` may hold with lower ones."""
        alone_s = self._cost.estimate_s(urgent_items)
        if alone_s is None:
            return urgent_items  # not measured: measure it alone rather than slow it unseen
        return self._cost.largest_within(urgent_items, self._max_batch_size, alone_s * (1 + FILL_SHARE))

    def look_again_at(
        self, urgent_level: int, now: float, finishes: Iterable[float | None], other_idle: bool, urgent_in_model: int
    ) -> float | None:
        """None if a yielding batch may start now on an idle worker; else when to look again
        (math.inf: when a batch finishes). `finishes`: when each batch in flight is due (None:
        not known), `other_idle`: whether another worker is free besides the one at hand,
        `urgent_in_model`: urgent requests queued or running."""
        due = list(finishes)
        if not due or other_idle or urgent_in_model >= self._arrivals[urgent_level].together:
            return None  # the last case: no more urgent ones come together lately
        budget_s = self._reserve_s(urgent_level)
        if budget_s is None:
            return None
        known = [at for at in due if at is not None]
        soonest = min(known, default=math.inf)
        return None if soonest <= now + budget_s else soonest - budget_s

    def _reserve_s(self, urgent_level: int) -> float | None:
        urgent_s = self._cost.estimate_s(self._arrivals[urgent_level].items)
        return None if urgent_s is None else RESERVE_SHARE * urgent_s
