"""Reading worker events back from inferd's log: when each worker became ready."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

READY_LINE = re.compile(r"^(\S+ \S+) INFO inferd\.supervisor: worker (\S+) (\S+) ready \(pid (\d+)", re.M)


@dataclass(frozen=True)
class ReadyEvent:
    at: float  # time.time()
    model: str
    slot: str
    pid: int


def ready_events(log: str) -> list[ReadyEvent]:
    return [
        ReadyEvent(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), model, slot, int(pid))
        for stamp, model, slot, pid in READY_LINE.findall(log)
    ]


def restart_times_s(kills: list[tuple[float, str, int]], events: list[ReadyEvent]) -> list[float | None]:
    """For each kill (time.time(), slot, pid): seconds until a new worker in that slot said Ready."""
    times: list[float | None] = []
    for killed_at, slot, pid in kills:
        after = [e.at for e in events if e.slot == slot and e.pid != pid and e.at >= killed_at - 0.01]
        times.append(round(min(after) - killed_at, 2) if after else None)
    return times
