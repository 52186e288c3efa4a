"""What one model's workers hold, by device, as the model pool budgets it.

On the host, each worker's unique set size (USS): the memory that would come back if it ended.
Workers fork from a helper that has torch loaded, so their resident size counts torch's shared
pages once per worker; USS counts only their own. On a GPU, torch's reserve as the worker last
reported it (a GPU worker's host memory counts on "cpu" too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import psutil

from inferd.messages import GpuMemory
from inferd.supervisor import EXITED, WorkerHandle

HOST = "cpu"


def footprint(
    workers: Iterable[WorkerHandle], gpu_reading: Callable[[WorkerHandle], GpuMemory | None]
) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for handle in workers:
        if handle.state == EXITED:
            continue
        sizes[HOST] = sizes.get(HOST, 0) + unique_bytes(handle.pid)
        reading = gpu_reading(handle)
        if reading is not None:
            sizes[reading.device] = sizes.get(reading.device, 0) + reading.reserved_bytes
    return sizes


def unique_bytes(pid: int) -> int:
    """The process's USS; its RSS where smaps cannot be read; 0 once it is gone."""
    try:
        process = psutil.Process(pid)
        try:
            return int(process.memory_full_info().uss)
        except psutil.AccessDenied:
            return int(process.memory_info().rss)
    except psutil.Error:
        return 0
