"""The kernel's count of OOM kills in this process's memory cgroup, so that a worker that died of
SIGKILL can be told apart as killed by the OOM killer.

cgroup v2: `oom_kill` in memory.events (hierarchical: kills in descendant cgroups count too).
cgroup v1: `oom_kill` in memory.oom_control (Linux >= 4.13). Mount points come from
/proc/self/mountinfo, so hybrid layouts (v1 memory, v2 at /sys/fs/cgroup/unified) and containers
with or without a cgroup namespace are found alike. Where neither file exists, nothing is ever
reported as an OOM kill.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PROC_SELF = Path("/proc/self")
V2_FILE, V1_FILE = "memory.events", "memory.oom_control"


class OomKills:
    """Each OOM kill the counter shows since this object was built can be claimed once."""

    def __init__(self, counter: Path | None) -> None:
        self.counter = counter
        self._claimed = (read_oom_kills(counter) if counter else None) or 0

    @classmethod
    def of_this_process(cls) -> OomKills:
        counter = counter_file()
        log.debug("OOM kills counted in %s", counter or "no cgroup file (not reported)")
        return cls(counter)

    def claim(self) -> bool:
        """Whether the kernel OOM-killed a process here that no earlier call accounted for: asked
        after a worker died of SIGKILL, it tells whether that was the OOM killer."""
        current = read_oom_kills(self.counter) if self.counter else None
        if current is None or current <= self._claimed:
            return False
        self._claimed += 1  # one at a time: two workers killed together each claim one
        return True


def read_oom_kills(counter: Path) -> int | None:
    try:
        text = counter.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def counter_file(proc_self: Path = PROC_SELF) -> Path | None:
    """memory.events (v2) or memory.oom_control (v1) of this process's cgroup, where one exists."""
    try:
        memberships = (proc_self / "cgroup").read_text().splitlines()
        mounts = (proc_self / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    for candidate in _candidates(memberships, mounts):
        if read_oom_kills(candidate) is not None:
            return candidate
    return None


def _candidates(memberships: list[str], mounts: list[str]) -> Iterator[Path]:
    """v2 first; each in this process's own cgroup, then at the mount's root (a container without a
    cgroup namespace sees the host's path in /proc/self/cgroup but its own cgroup at the root)."""
    for wanted in ("cgroup2", "cgroup"):
        for root, mount_point, options in _cgroup_mounts(mounts, wanted):
            own = _own_path(memberships, wanted, options)
            if own is None:
                continue
            name = V2_FILE if wanted == "cgroup2" else V1_FILE
            relative = own[len(root) :] if own.startswith(root) else ""
            yield Path(mount_point, relative.lstrip("/"), name)
            yield Path(mount_point, name)


def _cgroup_mounts(mounts: list[str], fstype: str) -> Iterator[tuple[str, str, set[str]]]:
    """(root within the hierarchy, mount point, super options) of each mount of `fstype`."""
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        parts, tail_parts = fields.split(), tail.split()
        if len(parts) >= 5 and len(tail_parts) >= 3 and tail_parts[0] == fstype:
            yield parts[3], parts[4], set(tail_parts[2].split(","))


def _own_path(memberships: list[str], fstype: str, options: set[str]) -> str | None:
    """This process's cgroup path in the hierarchy mounted with `options` (v1: the memory one)."""
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if fstype == "cgroup2" and hierarchy == "0" and controllers == "":
            return path
        if fstype == "cgroup" and "memory" in controllers.split(",") and "memory" in options:
            return path
    return None
