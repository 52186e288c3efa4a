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
