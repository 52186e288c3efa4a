"""What every check is given: the machine's facts, the model files, the scratch folder, the mode,
and a registry of the servers it started (so a check that runs out of time can be cut off)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu.report import Row, skipped
from gpu.serving import InferdServer

NO_GPU = "no GPU: torch sees no CUDA device here"


@dataclass
class Context:
    scratch: Path
    machine: dict[str, Any]
    files: dict[str, str]
    rehearse: bool  # run the GPU checks' machinery on the CPU, to test this script without a GPU
    wait_for_resnet: Callable[[], dict[str, str]] = dict  # the ResNet-50 files, built in the background
    servers: dict[str, InferdServer] = field(default_factory=dict)
    front_rps: float = 0.0  # inferd's figure in check 8, for its ratio to the bare server
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cuda(self) -> bool:
        return bool(self.machine.get("cuda_available"))

    @property
    def runs_gpu_checks(self) -> bool:
        return self.cuda or self.rehearse

    def device(self, plain: bool = False) -> str:
        """The device for a model's config: "cuda" (every GPU) when `plain`, else "cuda:0"."""
        if not self.cuda:
            return "cpu"
        return "cuda" if plain else "cuda:0"

    @property
    def cpus(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))

    @property
    def big_machine(self) -> bool:
        return len(self.cpus) >= 8

    def start(self, name: str, models: list[dict[str, Any]]) -> InferdServer:
        server = InferdServer(name, self.scratch, models)
        with self.lock:
            self.servers[name] = server
        try:
            return server.start()
        except BaseException:  # a server that never got ready must not hold the GPU for the next check
            self.stop(name)
            raise

    def launch(self, name: str, models: list[dict[str, Any]]) -> InferdServer:
        server = InferdServer(name, self.scratch, models)
        with self.lock:
            self.servers[name] = server
        return server.launch()

    def stop(self, name: str) -> None:
        with self.lock:
            server = self.servers.pop(name, None)
        if server is not None:
            server.stop()

    def stop_all(self) -> None:
        for name in list(self.servers):
            self.stop(name)

    def note(self, text: str = "") -> str:
        """A row's note, prefixed where the figures come from a CPU rehearsal."""
        if not self.rehearse or self.cuda:
            return text
        return "CPU rehearsal, GPU criteria not evaluated" + (f"; {text}" if text else "")

    def skip_rows(self, rows: list[tuple[str, str, str]]) -> list[Row]:
        return [skipped(check, name, expected, f"SKIPPED ({NO_GPU})") for check, name, expected in rows]
