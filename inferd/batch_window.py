"""How long a partial batch may wait for company while a worker is idle: learned, not configured.

The batcher dispatches as soon as a worker is free; while every worker is busy, requests gather
by themselves and leave together the moment one frees up. That alone is right for most models
(closed-loop clients, CPU models whose cost grows with every row). Waiting with a worker idle pays
only when two things hold at once:
- a batch's cost is mostly fixed (a GPU kernel launch, a Python round trip): a fuller batch costs
  little more than this one, so requests that ride along save a whole batch of their own; and
- requests arrive fast enough that at least one more is expected within this batch's run time, so
  the wait is short and someone really benefits from it.
Then the batch waits until it would be full at the observed arrival rate, never longer than half a
batch's fixed cost (the wait costs the held requests at most half a batch; each request that joins
saves a whole one) and never past `batch_timeout_s` from its oldest request when that is set.

The cost model is `compute_s = fixed_s + per_item_s * items`, fitted to the model's own batch times
by exponentially weighted least squares; the arrival rate is an exponentially weighted mean of the
gaps between requests. Both start empty, and an empty model never waits.
"""

from __future__ import annotations

from dataclasses import dataclass

SMOOTHING = 0.05  # weight of each new observation: about the last 20 batches or arrivals count
FIXED_SHARE_TO_WAIT = 0.5  # wait only when at least this share of a batch's cost is fixed
MAX_HOLD_SHARE_OF_FIXED = 0.5  # a hold never exceeds this share of a batch's fixed cost
MIN_BATCHES_OBSERVED = 8  # fewer and the fit is noise: do not wait


@dataclass
class _WeightedMeans:
    """Exponentially weighted means of x, y, x*x and x*y: enough for a running linear fit."""

    x: float = 0.0
    y: float = 0.0
    xx: float = 0.0
    xy: float = 0.0
    count: int = 0

    def add(self, x: float, y: float) -> None:
        weight = max(SMOOTHING, 1.0 / (self.count + 1))  # plain means until there are enough points
        self.x += weight * (x - self.x)
        self.y += weight * (y - self.y)
        self.xx += weight * (x * x - self.xx)
        self.xy += weight * (x * y - self.xy)
        self.count += 1

    def line(self) -> tuple[float, float]:
        """(intercept, slope) of y over x; a flat line through the mean when x never varied."""
        variance = self.xx - self.x * self.x
        slope = (self.xy - self.x * self.y) / variance if variance > 1e-12 else 0.0
        slope = max(slope, 0.0)  # a batch never gets cheaper with more items: noise otherwise
        return max(self.y - slope * self.x, 0.0), slope


class BatchWindow:
    """One model's learned batch cost and arrival rate, and the hold they imply."""

    def __init__(self, max_batch_size: int, batch_timeout_s: float | None) -> None:
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self._cost = _WeightedMeans()
        self._gap_s: float | None = None
        self._last_arrival: float | None = None

    def request_arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            gap_s = now - self._last_arrival
            self._gap_s = gap_s if self._gap_s is None else self._gap_s + SMOOTHING * (gap_s - self._gap_s)
        self._last_arrival = now

    def batch_done(self, items: int, compute_s: float) -> None:
        self._cost.add(float(items), compute_s)

    @property
    def arrival_rate_per_s(self) -> float:
        return 1.0 / self._gap_s if self._gap_s else 0.0

    def cost_s(self, items: int) -> float:
        fixed_s, per_item_s = self._cost.line()
        return fixed_s + per_item_s * items

    def hold_s(self, items_waiting: int) -> float:
        """How long a batch of `items_waiting` should wait for more, with a worker idle: 0 = go."""
        if self.batch_timeout_s == 0 or items_waiting >= self.max_batch_size:
            return 0.0
        if self._cost.count < MIN_BATCHES_OBSERVED or not self._gap_s:
            return 0.0
        fixed_s, _ = self._cost.line()
        batch_s = self.cost_s(items_waiting)
        rate = self.arrival_rate_per_s
        if batch_s <= 0 or fixed_s / batch_s < FIXED_SHARE_TO_WAIT or rate * batch_s < 1.0:
            return 0.0
        until_full_s = (self.max_batch_size - items_waiting) / rate
        hold_s = min(until_full_s, MAX_HOLD_SHARE_OF_FIXED * fixed_s)
        return min(hold_s, self.batch_timeout_s) if self.batch_timeout_s is not None else hold_s
