"""Live rates and quantiles from a real prometheus_client histogram, differenced between reads; the
clock is a parameter, so the window's edges are exact."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from inferd.rate_window import Buckets, Rates, RateWindow, quantile

BUCKETS_S = (0.001, 0.01, 0.1, 1.0)


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def histogram(*labels: str) -> Histogram:
    return Histogram("t_seconds", "t", list(labels), buckets=BUCKETS_S, registry=CollectorRegistry())


def test_quantiles_interpolate_inside_the_bucket_holding_the_rank() -> None:
    inf = float("inf")
    uniform = Buckets((0.1, 0.2, inf), (0.0, 100.0, 100.0))  # all 100 between 0.1 and 0.2
    assert quantile(0.5, uniform) == pytest.approx(0.15)
    assert quantile(0.99, uniform) == pytest.approx(0.199)
    assert quantile(0.5, Buckets((0.1, inf), (0.0, 4.0))) == 0.1  # past the last finite bound: that bound
    assert quantile(0.5, Buckets((0.1, inf), (0.0, 0.0))) is None
    assert quantile(0.5, Buckets((0.1, inf), (2.0, 2.0))) == pytest.approx(0.05)  # from 0 up to the first bound


def test_rates_come_from_the_difference_over_the_window() -> None:
    clock, durations = Clock(), histogram("model")
    window = RateWindow(durations.collect, window_s=5.0, clock=clock)
    for _ in range(7):
        durations.labels("old").observe(0.5)  # before the first read: never counted as live
    assert window.read().span_s is None  # one read: nothing to difference yet
    assert window.read().of(("old", None)) is None

    for _ in range(10):
        durations.labels("a").observe(0.005)
    durations.labels("a").observe(0.5)
    clock.now_s += 2.0
    traffic = window.read()
    assert traffic.span_s == pytest.approx(2.0)
    rates = traffic.of(("a", None))
    assert rates is not None and rates.requests_per_s == pytest.approx(11 / 2.0)
    assert rates.p50_s is not None and 0.001 < rates.p50_s <= 0.01
    assert rates.p99_s is not None and 0.1 < rates.p99_s <= 1.0
    assert traffic.of(("old", None)) == Rates(0.0, None, None)  # nothing new since the first read
    assert traffic.of(("never-called", None)) == Rates(0.0, None, None)


def test_the_baseline_slides_so_old_traffic_leaves_the_window() -> None:
    clock, durations = Clock(), histogram("model")
    window = RateWindow(durations.collect, window_s=5.0, clock=clock)
    window.read()
    durations.labels("a").observe(0.005)
    for _ in range(12):  # a reader every second, as the page polls
        clock.now_s += 1.0
        traffic = window.read()
    assert traffic.span_s == pytest.approx(5.0)
    assert traffic.of(("a", None)) == Rates(0.0, None, None)  # 12 s ago: out of the 5 s window


def test_after_a_long_silence_the_first_read_starts_afresh() -> None:
    clock, durations = Clock(), histogram("model")
    window = RateWindow(durations.collect, window_s=5.0, clock=clock)
    window.read()
    durations.labels("a").observe(0.005)
    clock.now_s += 3600.0  # nobody looked for an hour: an hour's average is no live figure
    assert window.read().span_s is None
    clock.now_s += 1.0
    assert window.read().of(("a", None)) == Rates(0.0, None, None)


def test_each_version_is_its_own_series() -> None:
    clock, durations = Clock(), histogram("model", "version")
    window = RateWindow(durations.collect, window_s=5.0, clock=clock)
    window.read()
    durations.labels("m", "1").observe(0.005)
    for _ in range(3):
        durations.labels("m", "2").observe(0.05)
    clock.now_s += 1.0
    traffic = window.read()
    one, two = traffic.of(("m", "1")), traffic.of(("m", "2"))
    assert one is not None and one.requests_per_s == pytest.approx(1.0)
    assert two is not None and two.requests_per_s == pytest.approx(3.0)


def test_reads_close_together_share_one_walk_over_the_histogram() -> None:
    clock, durations = Clock(), histogram("model")
    walks: list[float] = []

    def collect():  # the histogram's own collect, counted
        walks.append(clock.now_s)
        return durations.collect()

    window = RateWindow(collect, window_s=5.0, clock=clock)
    window.read()
    clock.now_s += 1.0
    durations.labels("a").observe(0.005)
    first = window.read()
    durations.labels("a").observe(0.005)
    clock.now_s += 0.2
    assert window.read() is first and len(walks) == 2  # many pages polling: one walk per half second
    clock.now_s += 0.3
    later = window.read().of(("a", None))
    assert len(walks) == 3 and later is not None and later.requests_per_s == pytest.approx(2 / 1.5)


def test_a_models_series_under_each_protocol_add_up() -> None:
    clock, durations = Clock(), histogram("model", "protocol")
    window = RateWindow(durations.collect, window_s=5.0, clock=clock)
    window.read()
    for _ in range(3):
        durations.labels("a", "http").observe(0.005)
    durations.labels("a", "grpc").observe(0.5)
    clock.now_s += 2.0
    rates = window.read().of(("a", None))
    assert rates is not None and rates.requests_per_s == pytest.approx(4 / 2.0)
    assert rates.p50_s is not None and 0.001 < rates.p50_s <= 0.01
    assert rates.p99_s is not None and 0.1 < rates.p99_s <= 1.0
