"""How long an idle generative worker waits for more sequences before it prefills the first.

Requests often come in bursts (a client that sends several at once, or many clients woken by the
same event); they reach an idle worker a few milliseconds apart. Prefilled as they come, the first
one goes alone and every other waits for its whole pass; gathered, they share passes, and a pass
costs far less than one per prompt (reading the weights dominates a short prompt's pass). So an
idle worker that has just been given a sequence keeps taking newcomers while they keep coming:
it stops at the first gap of `gap_s` without one, or after `longest_s` in all.

Both bounds are fractions of the prefill pass this worker measured (smoothed): a lone request
(one client at a time) waits one gap, a few percent of its own prefill; a newcomer caught saves
the better part of a pass.
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

    def observe_prefill(self, seconds: float) -> None:
        if self.prefill_s is None:
            self.prefill_s = seconds
        else:
            self.prefill_s += SMOOTHING * (seconds - self.prefill_s)

    def next_hold(self) -> Hold | None:
        """The hold for a sequence that reached an idle worker, or None: prefill it at once."""
        if self.prefill_s is None:
            return None
        longest_s = HOLD_FRACTION * self.prefill_s
        return Hold(longest_s, GAP_FRACTION * longest_s)
