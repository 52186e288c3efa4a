"""Handler models for the model pool's tests: one whose load and whose requests wait for the test
to open a gate (a file appearing), and one that holds a known amount of memory."""

from __future__ import annotations

import os
import time
from typing import Any

from inferd import Handler

GATE_POLL_S = 0.02


def wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(GATE_POLL_S)


class Gated(Handler):
    """Sets up only once handler_args["load_gate"] exists (when given); an item {"hold": PATH} is
    answered only once PATH exists. Answers each item with itself, its pid and handler_args["tag"]."""

    def setup(self, device: str) -> None:
        gate = self.handler_args.get("load_gate")
        if gate:
            wait_for(gate)

    def predict(self, items: list[Any]) -> list[Any]:
        for item in items:
            if isinstance(item, dict) and "hold" in item:
                wait_for(item["hold"])
        return [{"item": item, "pid": os.getpid(), "tag": self.handler_args.get("tag")} for item in items]


class Ballast(Handler):
    """Holds handler_args["mb"] MiB of its own, written so that it is resident, from its setup on."""

    def setup(self, device: str) -> None:
        self.ballast = b"\x01" * (int(self.handler_args["mb"]) * 2**20)

    def predict(self, items: list[Any]) -> list[Any]:
        return [{"item": item, "pid": os.getpid()} for item in items]
