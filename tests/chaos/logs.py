"""What every chaos test asserts of the daemon's log: faults are expected events, each one line;
none of them leaves a traceback or an exception escaping into the event loop."""

from __future__ import annotations

# A traceback's first line; asyncio's lines for an exception no one handled; a warning printed
# with its source line (warnings.warn's format) is an unhandled event too.
FORBIDDEN = (
    "Traceback (most recent call last)",
    "Exception in callback",
    "Task exception was never retrieved",
    "Fatal error: protocol",
    "Warning: ",
)


def assert_clean_log(log: str) -> None:
    found = [(n, line) for n, line in enumerate(log.splitlines(), 1) if any(word in line for word in FORBIDDEN)]
    assert not found, "the daemon's log holds what no fault should leave:\n" + "\n".join(
        f"  line {n}: {line}" for n, line in found[:20]
    )
