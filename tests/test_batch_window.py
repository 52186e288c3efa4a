"""The learned hold for partial batches: when waiting for company pays, and how long."""

from __future__ import annotations

import pytest

from inferd.batch_window import BatchWindow


def taught(window: BatchWindow, fixed_s: float, per_item_s: float, arrivals_per_s: float) -> BatchWindow:
    for items in (1, 2, 4, 8, 16, 3, 5, 7, 9, 12):
        window.batch_done(items, fixed_s + per_item_s * items)
    for n in range(100):
        window.request_arrived(n / arrivals_per_s)
    return window


def test_a_window_with_no_history_never_holds() -> None:
    assert BatchWindow(32, None).hold_s(1) == 0.0


def test_the_cost_model_is_fitted_to_the_batch_times() -> None:
    window = taught(BatchWindow(32, None), fixed_s=0.004, per_item_s=0.001, arrivals_per_s=100)
    assert window.cost_s(10) == pytest.approx(0.014, rel=1e-3)
    assert window.arrival_rate_per_s == pytest.approx(100, rel=1e-6)


def test_a_flat_cost_under_load_holds_until_full_at_most_half_the_fixed_cost() -> None:
    busy = taught(BatchWindow(32, None), fixed_s=0.010, per_item_s=0.0001, arrivals_per_s=1000)
    assert busy.hold_s(1) == pytest.approx(0.005)  # half the fixed cost: 31 more would take 31 ms
    nearly_full = taught(BatchWindow(32, None), fixed_s=0.010, per_item_s=0.0001, arrivals_per_s=1000)
    assert nearly_full.hold_s(30) == pytest.approx(0.002)  # two more arrive in 2 ms


def test_a_cost_that_grows_with_each_item_never_holds() -> None:
    cpu_like = taught(BatchWindow(32, None), fixed_s=0.0001, per_item_s=0.001, arrivals_per_s=10_000)
    assert cpu_like.hold_s(1) == 0.0


def test_light_traffic_never_holds() -> None:
    idle = taught(BatchWindow(32, None), fixed_s=0.010, per_item_s=0.0, arrivals_per_s=20)  # one per 50 ms
    assert idle.hold_s(1) == 0.0


def test_batch_timeout_caps_the_hold_and_zero_disables_it() -> None:
    capped = taught(BatchWindow(32, 0.001), fixed_s=0.010, per_item_s=0.0, arrivals_per_s=1000)
    assert capped.hold_s(1) == pytest.approx(0.001)
    never = taught(BatchWindow(32, 0.0), fixed_s=0.010, per_item_s=0.0, arrivals_per_s=1000)
    assert never.hold_s(1) == 0.0


def test_a_full_batch_never_holds() -> None:
    window = taught(BatchWindow(8, None), fixed_s=0.010, per_item_s=0.0, arrivals_per_s=1000)
    assert window.hold_s(8) == 0.0
