"""What nvidia-smi says about the GPUs and the processes on them; None wherever it cannot say."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class DeviceReading:
    index: int
    used_bytes: int
    total_bytes: int


def available() -> bool:
    return shutil.which("nvidia-smi") is not None


def _query(*arguments: str) -> list[list[str]] | None:
    if not available():
        return None
    try:
        finished = subprocess.run(
            ["nvidia-smi", *arguments, "--format=csv,noheader,nounits"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if finished.returncode != 0:
        return None
    return [[cell.strip() for cell in line.split(",")] for line in finished.stdout.splitlines() if line.strip()]


def devices() -> list[DeviceReading] | None:
    rows = _query("--query-gpu=index,memory.used,memory.total")
    if rows is None:
        return None
    try:
        return [DeviceReading(int(i), int(used) * MIB, int(total) * MIB) for i, used, total in rows]
    except ValueError:
        return None


def processes() -> dict[int, int] | None:
    """GPU memory per process id, in bytes; {} when nvidia-smi lists none (as in some containers)."""
    rows = _query("--query-compute-apps=pid,used_memory")
    if rows is None:
        return None
    readings = {}
    for row in rows:
        try:
            readings[int(row[0])] = int(row[1]) * MIB
        except (ValueError, IndexError):
            continue  # "[N/A]" where the driver does not account per process
    return readings


def describe() -> str:
    rows = _query("--query-gpu=name,driver_version,memory.total")
    if not rows:
        return "nvidia-smi: not available"
    return "; ".join(f"{name}, driver {driver}, {total} MiB" for name, driver, total in rows)
