"""How long a model's worker stays busy with a batch of n items, learned per batch size.

As the worker reports it (its `compute_s`: decode, predict and encode; the channel's round trip,
a fraction of a millisecond, is left out). Each size keeps its own exponentially weighted mean and
mean deviation, so a size rare under load (an urgent request's batch of one beside a flood of full
batches) is not forgotten while another dominates, as one line fitted to recent batches would
forget it, and "done by" can mean almost always, not on average. A size never seen is read off the
straight line between the nearest sizes seen below and above it; outside the sizes seen the cost
is unknown (None), and whoever asks acts as if nothing were known.
"""

from __future__ import annotations

import bisect

SMOOTHING = 0.1  # weight of each new batch of a size: about the last 10 of that size count
LATE_SPREADS = 2.0  # a batch is almost always done by its mean plus this many mean deviations


class BatchCost:
    def __init__(self) -> None:
        self._mean_s: dict[int, float] = {}
        self._late_s: dict[int, float] = {}  # mean plus LATE_SPREADS mean absolute deviations
        self._spread_s: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._sizes: list[int] = []  # the sizes seen, ascending

    def observe(self, items: int, compute_s: float, smoothing: float = SMOOTHING) -> None:
        """One batch's time; `smoothing` is its weight once the size has enough batches."""
        count = self._count.get(items, 0)
        if count == 0:
            bisect.insort(self._sizes, items)
            self._mean_s[items], self._spread_s[items] = compute_s, 0.0
        else:
            weight = max(smoothing, 1.0 / (count + 1))  # a plain mean until there are enough
            self._spread_s[items] += weight * (abs(compute_s - self._mean_s[items]) - self._spread_s[items])
            self._mean_s[items] += weight * (compute_s - self._mean_s[items])
        self._late_s[items] = self._mean_s[items] + LATE_SPREADS * self._spread_s[items]
        self._count[items] = count + 1

    def count(self, items: int) -> int:
        """How many batches of exactly `items` were observed."""
        return self._count.get(items, 0)

    def estimate_s(self, items: int) -> float | None:
        """The mean compute time of a batch of `items`, or None where no size at or around it was seen."""
        return self._read(self._mean_s, items)

    def late_s(self, items: int) -> float | None:
        """The time by which a batch of `items` is almost always done (None: not known)."""
        return self._read(self._late_s, items)

    def _read(self, table: dict[int, float], items: int) -> float | None:
        value = table.get(items)
        if value is not None:
            return value
        above = bisect.bisect(self._sizes, items)
        if above == 0 or above == len(self._sizes):
            return None
        low, high = self._sizes[above - 1], self._sizes[above]
        share = (items - low) / (high - low)
        return table[low] + share * (table[high] - table[low])

    def largest_within(self, items: int, limit_items: int, budget_s: float) -> int:
        """The most items, from `items` up to `limit_items`, whose batch is known to take at most
        `budget_s` on average; `items` itself where no larger one is."""
        best = items
        for size in range(items + 1, limit_items + 1):
            estimate_s = self.estimate_s(size)
            if estimate_s is None or estimate_s > budget_s:
                break
            best = size
        return best
