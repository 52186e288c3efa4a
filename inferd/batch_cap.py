"""The largest batch worth running under load: learned from the model's own batch times.

`max_batch_size` is an upper bound, not always the best size. On a CPU, a model whose activations
outgrow the cache at large batches costs more per item the bigger the batch (EfficientNet-Lite0 on
one core: about 25 ms an image up to 4, 71 at 32), so while requests queue beyond one batch, full
batches halve the throughput. For GEMM-heavy and tiny models the cost per item falls with size and
full batches are right; those must keep them.

The cap keeps the measured cost per item for batch sizes in power-of-two buckets (the bucket of
`n` items is the next power of two at or above it, `max_batch_size` the last one), exponentially
weighted, in a `BatchCost` keyed by bucket. The cap is the largest bucket about as cheap per
item as the cheapest measured (each larger one measured costs more than 1/CLEAR_GAIN of the
cheapest; MIN_SAMPLES batches make a bucket measured), `max_batch_size` where that is the largest
measured, so noise never caps a flat curve and a model measured only at small sizes (while traffic
was light) keeps full batches. Judged against the cheapest, not step by step: a curve rising by
less than a fifth at each doubling still leads the cap down, where a rule asking each
smaller bucket to beat the next larger one clearly would stop at the first step. A size's first
batch is left out (COLD_BATCHES): counted, it kept EfficientNet's bucket of 8 looking dear, and the
classify pipeline's network ran batches of 16 in two runs of three (30 images/s against 45). A size
not run under load is never measured, so every few batches (PROBE_EVERY_*) one is offered at the
neighbouring bucket, above and below the cap in turn: a model whose best size changes, or whose
first measurements were noisy, moves back. The cap only limits how many items a batch takes; a
request's items are never split.

The cost is the batch's CPU time where the worker reports one (one torch thread on a CPU does all
its work), else its wall time: other processes on the same cores stretch the wall time of every
size alike and hide the curve.
"""

from __future__ import annotations

from inferd.batch_cost import SMOOTHING, BatchCost

CLEAR_GAIN = 0.9  # a smaller bucket wins only at below this share of each larger one's cost per item
MIN_SAMPLES = 3  # batches a bucket needs before its cost counts
COLD_BATCHES = 1  # the first batches of each exact size, left out
OFF_CAP_SMOOTHING = 0.3  # the weight of a batch outside the cap's bucket (the cap's: batch_cost's SMOOTHING)
PROBE_EVERY_UNMEASURED = 2  # batches between probes while a neighbouring bucket is not measured
PROBE_EVERY = 8  # batches between two probes at a measured neighbour, at first
PROBE_EVERY_MAX = 32  # while probes keep the cap where it is, they grow rarer up to this


class BatchSizeCap:
    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.buckets = _buckets(max_batch_size)
        self._per_item = BatchCost()  # keyed by bucket: the cost per item of its batches
        self.cap = max_batch_size
        self._since_probe = 0
        self._probe_every = PROBE_EVERY
        self._probe: int | None = None  # the bucket offered until a batch in it is measured
        self._probe_up = False  # the direction of the next probe
        self._sizes_seen: dict[int, int] = {}  # batches of each exact size, up to COLD_BATCHES

    def limit(self) -> int:
        """How many items the next batch may take."""
        return self.cap if self._probe is None else self._probe

    def observe(self, items: int, compute_s: float) -> None:
        seen = self._sizes_seen.get(items, 0)
        if seen < COLD_BATCHES:
            # A size's first batch pays one-off costs (TorchScript specialises for each new
            # shape; the allocator grows): EfficientNet's first batch of 8 took twice a later
            # one, and kept the bucket looking dear long after. A probe stays open for a warm one.
            self._sizes_seen[items] = seen + 1
            return
        bucket = self.bucket(items)
        # A bucket other than the cap's runs only now and then (a probe, a lull): each of its
        # batches says more of what it costs now than one of the cap's many.
        smoothing = SMOOTHING if bucket == self.cap else OFF_CAP_SMOOTHING
        self._per_item.observe(bucket, compute_s / items, smoothing)
        if bucket == self._probe:
            self._probe = None
        cap, self.cap = self.cap, self._best()
        if cap != self.cap:
            self._probe_every = PROBE_EVERY  # a move may be followed by another: look again soon
        self._since_probe += 1
        # Not before the cap's own bucket is measured: probing a neighbour every other batch
        # would leave few batches at the cap to measure it (EfficientNet stayed at 32, probing 16,
        # for six seconds), and the first batches at the cap say where to look.
        measured_cap = self.per_item_s(self.cap) is not None
        if self._probe is None and measured_cap and self._since_probe >= self._probe_interval():
            self._start_probe()

    def _probe_interval(self) -> int:
        index = self.buckets.index(self.cap)
        sides = self.buckets[max(index - 1, 0) : index + 2]
        unmeasured = any(self.per_item_s(b) is None for b in sides)
        return PROBE_EVERY_UNMEASURED if unmeasured else self._probe_every

    def _start_probe(self) -> None:
        self._since_probe = 0
        neighbours = self._neighbours()
        unmeasured = [b for b in neighbours if self.per_item_s(b) is None]
        if unmeasured:
            self._probe = unmeasured[0]
        elif neighbours:
            # Both sides measured and the cap stayed: each further probe is worth less.
            self._probe_every = min(2 * self._probe_every, PROBE_EVERY_MAX)
            self._probe = neighbours[0]

    def bucket(self, items: int) -> int:
        return next(b for b in self.buckets if b >= items)

    def per_item_s(self, bucket: int) -> float | None:
        """The measured cost per item of a batch in `bucket`, or None with too few samples."""
        if self._per_item.count(bucket) < MIN_SAMPLES:
            return None
        return self._per_item.estimate_s(bucket)

    def _best(self) -> int:
        measured = [(b, cost) for b in self.buckets if (cost := self.per_item_s(b)) is not None]
        if not measured:
            return self.max_batch_size
        # The largest bucket about as cheap per item as the cheapest measured: a smaller one is
        # chosen only where every larger one measured costs clearly more. Compared with the
        # cheapest, not bucket by bucket: a curve rising a little at each doubling still leads
        # the cap down. Sizes never measured above the largest measured are taken to cost the
        # same as it, so a model measured only at small sizes keeps full batches.
        cheapest = min(cost for _, cost in measured)
        chosen = max(b for b, cost in measured if CLEAR_GAIN * cost <= cheapest)
        return self.max_batch_size if chosen == measured[-1][0] else chosen

    def _neighbours(self) -> list[int]:
        """The buckets on either side of the cap, the next one to probe first (they take turns)."""
        index = self.buckets.index(self.cap)
        self._probe_up = not self._probe_up
        sides = [index + 1, index - 1] if self._probe_up else [index - 1, index + 1]
        return [self.buckets[i] for i in sides if 0 <= i < len(self.buckets)]


def _buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below `max_batch_size`, then `max_batch_size` itself."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes + [max_batch_size] if max_batch_size > 1 else sizes
