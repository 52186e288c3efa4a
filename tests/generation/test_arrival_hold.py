"""The idle worker's hold for a burst's other sequences (inferd/generation/arrival_hold.py)."""

from __future__ import annotations

import pytest

from inferd.generation.arrival_hold import GAP_FRACTION, HOLD_FRACTION, SMOOTHING, ArrivalHold


def test_no_hold_before_a_prefill_was_measured() -> None:
    assert ArrivalHold().next_hold() is None


def test_the_hold_is_a_fraction_of_the_measured_prefill() -> None:
    hold = ArrivalHold()
    hold.observe_prefill(0.1)
    found = hold.next_hold()
    assert found is not None
    assert found.longest_s == pytest.approx(HOLD_FRACTION * 0.1)
    assert found.gap_s == pytest.approx(GAP_FRACTION * HOLD_FRACTION * 0.1)


def test_the_measure_follows_the_passes_smoothed() -> None:
    hold = ArrivalHold()
    hold.observe_prefill(0.1)
    hold.observe_prefill(0.2)
    assert hold.prefill_s == pytest.approx(0.1 + SMOOTHING * 0.1)


def test_a_hold_that_caught_nobody_stops_the_holds_until_a_burst_shows() -> None:
    hold = ArrivalHold()
    hold.observe_prefill(0.1)
    assert hold.next_hold() is not None
    hold.held(caught=0)  # one client at a time: the hold was a pure wait
    assert hold.next_hold() is None
    hold.joined(0)  # nobody came during that sequence's prefill
    assert hold.next_hold() is None
    hold.joined(3)  # three came while the unheld one was prefilled: a hold would have caught them
    assert hold.next_hold() is not None


def test_holds_that_catch_newcomers_go_on() -> None:
    hold = ArrivalHold()
    hold.observe_prefill(0.1)
    for _ in range(3):
        assert hold.next_hold() is not None
        hold.held(caught=7)


def test_newcomers_joining_a_batch_that_started_held_change_nothing() -> None:
    hold = ArrivalHold()
    hold.observe_prefill(0.1)
    hold.next_hold()
    hold.held(caught=0)
    hold.next_hold()  # unheld start
    hold.joined(0)  # its first busy look: nobody
    hold.joined(5)  # later joiners of a running batch say nothing about bursts at an idle worker
    assert hold.next_hold() is None
