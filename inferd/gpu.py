"""What the main process may know of GPUs, through NVML only: it never creates a CUDA context.

NVML is the one foreign dependency here; on a machine without an NVIDIA driver every function
answers "no GPUs" instead of raising.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # "cuda:N", N as CUDA_VISIBLE_DEVICES numbers it
    used_bytes: int
    total_bytes: int


def _nvml():  # type: ignore[no-untyped-def]
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver, no library: both mean no GPUs here
        return None


def _visible_indices(physical_count: int) -> list[int]:
    """Physical GPU indices in CUDA order, honouring CUDA_VISIBLE_DEVICES where it lists numbers."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(physical_count))
    indices = []
    for item in visible.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) >= physical_count:
            break  # CUDA stops at the first invalid entry; UUIDs are not mapped here
        indices.append(int(item))
    return indices


def visible_gpu_count() -> int:
    nvml = _nvml()
    if nvml is None:
        return 0
    return len(_visible_indices(nvml.nvmlDeviceGetCount()))


def device_memory() -> list[DeviceMemory]:
    """Used and total memory of every visible GPU, as nvidia-smi reports them."""
    nvml = _nvml()
    if nvml is None:
        return []
    readings = []
    for cuda_index, physical in enumerate(_visible_indices(nvml.nvmlDeviceGetCount())):
        info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(physical))
        readings.append(DeviceMemory(f"cuda:{cuda_index}", int(info.used), int(info.total)))
    return readings
