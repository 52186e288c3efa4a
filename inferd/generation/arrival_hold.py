"""How long an idle generative worker waits for more sequences before it prefills the first.

Requests often come in bursts (a client that sends several at once, or many clients woken by the
same event); they reach an idle worker a few milliseconds apart. Prefilled as they come, the first
one goes alone and every other waits for its whole pass; gathered, they share passes, and a pass
costs far less than one per prompt (reading the weights dominates a short prompt's pass). So an
idle worker that has just been given a sequence keeps taking newcomers while they keep coming:
it stops at the first gap of `gap_s` without one, or after `longest_s` in all.

Both bounds are fractions of the prefill pass this worker measured (smoothed); a newcomer caught
saves the better part of a pass. A hold that catches nobody was a pure wait (one gap: a client
sending one request at a time paid about 15 ms of a 130 ms time to first token for it), so the
worker stops holding until the traffic shows bursts again: a sequence that joins while the
prefill of an unheld one runs, which a hold would have caught.
"""

from __future__ import annotations

from dataclasses import dataclass

HOLD_FRACTION = 0.2  # the longest hold, of a measured prefill pass
GAP_FRACTION = 0.2  # the gap without a newcomer that ends a hold, of the longest hold
SMOOTHING = 0.3  # weight of the newest pass in the running estimate


@dataclass(frozen=True)
class Hold:
    longest_s: float
    gap_s: float


class ArrivalHold:
    def __init__(self) -> None:
        self.prefill_s: float | None = None  # a prefill pass, smoothed; None until one ran
        self.bursty = True  # whether arrivals come in bursts: only then does an idle worker hold
        self._unheld_start = False  # the running batch began with a sequence that was not held

    def observe_prefill(self, seconds: float) -> None:
        if self.prefill_s is None:
            self.prefill_s = seconds
        else:
            self.prefill_s += SMOOTHING * (seconds - self.prefill_s)

    def next_hold(self) -> Hold | None:
        """The hold for a sequence that reached an idle worker, or None: prefill it at once."""
        if self.prefill_s is None or not self.bursty:
            self._unheld_start = self.prefill_s is not None
            return None
        longest_s = HOLD_FRACTION * self.prefill_s
        return Hold(longest_s, GAP_FRACTION * longest_s)

    def held(self, caught: int) -> None:
        """A hold ended having caught `caught` newcomers."""
        self.bursty = caught > 0

    def joined(self, newcomers: int) -> None:
        """The first messages taken while busy, after an idle start, held `newcomers` sequences."""
        if self._unheld_start and newcomers:
            self.bursty = True
        self._unheld_start = False
