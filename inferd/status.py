"""What the status page shows, as one JSON document built from the running daemon on request.

A row per model and version (a model without versions is one row with `version: null`), read
through `ServedModel.describe()`: state, queue depth, workers with the CPUs each is pinned to and
its device; live requests/s and p50/p99 from `RateWindow`; GPU memory per device from the
readings GPU workers send anyway (`StateCollector.gpu_readings`). Beside them the machine: every
CPU (and whether inferd may use it) and every visible GPU with its memory, so the page can draw
who is pinned where. Nothing here runs unless someone asks for the page's data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from inferd import __version__, gpu
from inferd.messages import GpuMemory
from inferd.placement import usable_cpus
from inferd.rate_window import DEFAULT_WINDOW_S, RateWindow, Traffic
from inferd.versions import public_name

if TYPE_CHECKING:
    from inferd.daemon import Daemon, ServedModel

Row = dict[str, Any]
GpuReadings = Mapping[tuple[str, str], GpuMemory]  # (model, worker slot) -> its last reading


class StatusBoard:
    def __init__(
        self, daemon: Daemon, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._daemon = daemon
        self._traffic = RateWindow(daemon.metrics.request_duration.collect, window_s, clock)
        self._cpus = machine_cpus()  # the affinity mask is fixed for the process's life

    def snapshot(self) -> dict[str, Any]:
        traffic = self._traffic.read()
        readings = self._daemon.state.gpu_readings()
        models, pool = list(self._daemon.models.values()), self._daemon.pool
        return {
            "inferd_version": __version__,
            "rates_window_s": traffic.span_s,
            "machine": {"cpus": self._cpus, "gpus": machine_gpus()},
            "models": [row for model in models for row in model_rows(model, traffic, readings, pool.describe(model))],
        }


def machine_cpus() -> list[dict[str, Any]]:
    """Every CPU of the machine; `usable`: inside inferd's affinity mask and cgroup quota."""
    usable = set(usable_cpus())
    return [{"cpu": cpu, "usable": cpu in usable} for cpu in range(os.cpu_count() or 1)]


def machine_gpus() -> list[dict[str, Any]]:
    return [{"device": d.device, "used_bytes": d.used_bytes, "total_bytes": d.total_bytes} for d in gpu.device_memory()]


def model_rows(
    model: ServedModel, traffic: Traffic, readings: GpuReadings, described: Mapping[str, Any] | None = None
) -> list[Row]:
    """The model's rows: one per version, each with its own workers and figures; `described` is
    the model pool's description (its state: unloaded, loading, ...) where there is one."""
    described = described or model.describe()
    version = described.get("version")
    return [_row(described, None if version is None else str(version), traffic, readings)]


def _row(described: Mapping[str, Any], version: str | None, traffic: Traffic, readings: GpuReadings) -> Row:
    name = str(described["name"])
    workers = [worker_view(w) for w in described["workers"]]
    rates = traffic.of((name, version))
    return {
        "model": public_name(name),  # a version's row: its model's name, beside its version
        "version": version,
        "state": described["state"],
        "reason": described.get("reason"),
        "kind": _kind(described),
        "device": described.get("device"),
        "route": described.get("route"),
        "queue_depth": described.get("queue_depth", 0),
        "workers": workers,
        "requests_per_s": None if rates is None else rates.requests_per_s,
        "latency_p50_s": None if rates is None else rates.p50_s,
        "latency_p99_s": None if rates is None else rates.p99_s,
        "gpu_memory": gpu_memory(name, [w["slot"] for w in workers], readings),
    }


def _kind(described: Mapping[str, Any]) -> str:
    if described.get("pipeline"):
        return "pipeline"
    return "generative" if described.get("generative") else "batched"


def worker_view(worker: Mapping[str, Any]) -> Row:
    """A worker as described, with its device read from its slot name ("cpu:0/1", "cuda:0/0")."""
    slot = str(worker["slot"])
    device = slot.rsplit("/", 1)[0]
    return {**worker, "device": "cpu" if device.startswith("cpu") else device}


def gpu_memory(model: str, slots: list[str], readings: GpuReadings) -> list[Row]:
    """What torch holds on each device for this model, summed over its current workers."""
    by_device: dict[str, list[int]] = {}
    for slot in slots:
        reading = readings.get((model, slot))
        if reading is not None:
            held = by_device.setdefault(reading.device, [0, 0])
            held[0] += reading.allocated_bytes
            held[1] += reading.reserved_bytes
    return [
        {"device": device, "allocated_bytes": allocated, "reserved_bytes": reserved}
        for device, (allocated, reserved) in sorted(by_device.items())
    ]
