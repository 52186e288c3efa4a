"""Live requests/s and latency quantiles per model, from the request-duration histogram.

Each read samples the histogram's cumulative bucket counts and differences them against a sample
taken about `window_s` earlier, so the request path does nothing for these figures: they cost one
walk over the histogram's series per read, and only while someone reads them (the status page).
Quantiles are estimated as Prometheus' `histogram_quantile` does, by linear interpolation inside
the bucket that holds the rank, so they are as fine as `server.histogram_buckets_s`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

SeriesKey = tuple[str, str | None]  # (model, version); version is None for a model without versions
DEFAULT_WINDOW_S = 5.0
SAMPLE_EVERY_S = 0.5  # reads closer together than this share one answer (many open pages, one walk)
MIN_SPAN_S = 0.5  # below this a difference says more about timing noise than about traffic


@dataclass(frozen=True)
class Rates:
    requests_per_s: float
    p50_s: float | None  # None: no request in the window
    p99_s: float | None


@dataclass(frozen=True)
class Traffic:
    """The figures of one read: `span_s` is None until two samples far enough apart exist."""

    span_s: float | None
    by_series: Mapping[SeriesKey, Rates]

    def of(self, key: SeriesKey) -> Rates | None:
        """A series' rates; a series with no request yet reads as idle once the span is known."""
        if self.span_s is None:
            return None
        return self.by_series.get(key, Rates(0.0, None, None))


@dataclass(frozen=True)
class Buckets:
    """One series' cumulative counts at each upper bound (the last bound is +Inf)."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    def minus(self, earlier: Buckets | None) -> Buckets:
        if earlier is None or earlier.bounds != self.bounds or earlier.counts[-1] > self.counts[-1]:
            return self  # new series, changed buckets or a reset: everything counted is new
        return Buckets(self.bounds, tuple(now - then for now, then in zip(self.counts, earlier.counts)))


@dataclass(frozen=True)
class _Sample:
    at_s: float
    series: Mapping[SeriesKey, Buckets]


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of the observations counted in `buckets`, or None if there are none."""
    total = buckets.counts[-1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(buckets.bounds, buckets.counts):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the rank lies past the largest finite bound: report that bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_buckets(families: Iterable[Metric]) -> dict[SeriesKey, Buckets]:
    """Each series' buckets, keyed by its `model` and (where the label exists) `version`."""
    collected: dict[SeriesKey, list[tuple[float, float]]] = {}
    for family in families:
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                collected.setdefault(_key(sample), []).append((float(sample.labels["le"]), sample.value))
    return {key: _buckets(pairs) for key, pairs in collected.items()}


def _key(sample: Sample) -> SeriesKey:
    return sample.labels.get("model", ""), sample.labels.get("version")


def _buckets(pairs: list[tuple[float, float]]) -> Buckets:
    # A model's series under other labels (protocol: http, grpc) share its bounds: summed per bound.
    summed: dict[float, float] = {}
    for bound, count in pairs:
        summed[bound] = summed.get(bound, 0.0) + count
    bounds = sorted(summed)
    return Buckets(tuple(bounds), tuple(summed[bound] for bound in bounds))


class RateWindow:
    """Differences successive reads of one histogram over a sliding window of `window_s`."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Metric]],
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._collect = collect
        self.window_s = window_s
        self._clock = clock
        self._samples: deque[_Sample] = deque()
        self._last: tuple[float, Traffic] | None = None

    def read(self) -> Traffic:
        """The rates now; reads within SAMPLE_EVERY_S of the last one get its answer again."""
        at_s = self._clock()
        if self._last is None or at_s - self._last[0] >= SAMPLE_EVERY_S:
            self._last = (at_s, self._difference(_Sample(at_s, histogram_buckets(self._collect()))))
        return self._last[1]

    def _difference(self, now: _Sample) -> Traffic:
        self._forget_before(now.at_s)
        baseline = self._samples[0] if self._samples else None
        self._samples.append(now)
        if baseline is None or now.at_s - baseline.at_s < MIN_SPAN_S:
            return Traffic(None, {})
        span_s = now.at_s - baseline.at_s
        deltas = {key: buckets.minus(baseline.series.get(key)) for key, buckets in now.series.items()}
        return Traffic(span_s, {key: _rates(delta, span_s) for key, delta in deltas.items()})

    def _forget_before(self, now_s: float) -> None:
        """Keep the newest sample at least `window_s` old as the baseline, and none older."""
        samples = self._samples
        while samples and now_s - samples[0].at_s > 2 * self.window_s:
            samples.popleft()  # nobody read for a while: a baseline this old is no longer live
        while len(samples) > 1 and now_s - samples[1].at_s >= self.window_s:
            samples.popleft()


def _rates(delta: Buckets, span_s: float) -> Rates:
    return Rates(delta.counts[-1] / span_s, quantile(0.5, delta), quantile(0.99, delta))
