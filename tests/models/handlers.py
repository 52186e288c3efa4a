"""Tiny handler models for tests: each shows one behaviour a real model can have."""

from __future__ import annotations

import os
import time
from typing import Any

from inferd import Handler


class Echo(Handler):
    """Answers each item with itself and facts about the batch and the worker that ran it."""

    def setup(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = device

    def predict(self, items: list[Any]) -> list[Any]:
        delay_s = float(self.handler_args.get("delay_s", 0.0))
        if delay_s:
            time.sleep(delay_s)
        facts = {
            "batch_size": len(items),
            "pid": os.getpid(),
            "cpus": sorted(os.sched_getaffinity(0)),
            "threads": self.torch.get_num_threads(),
            "interop_threads": self.torch.get_num_interop_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "device": self.device,
            "tag": self.handler_args.get("tag"),
        }
        return [{"item": item, **facts} for item in items]


class Faulty(Handler):
    """Raises on the item "bad", exits the process on "crash", hangs on "hang"; echoes the rest."""

    def predict(self, items: list[Any]) -> list[Any]:
        if "crash" in items:
            os._exit(17)
        if "hang" in items:
            time.sleep(3600)
        if "bad" in items:
            raise ValueError("the item 'bad' is not allowed")
        return [{"item": item, "batch_size": len(items), "pid": os.getpid()} for item in items]


class CrashOnLoad(Handler):
    def setup(self, device: str) -> None:
        raise RuntimeError("weights file is corrupt")


class WrongRows(Handler):
    def predict(self, items: list[Any]) -> list[Any]:
        return items + items


class FailsToLoadWhileMarked(Handler):
    """Fails to load while the file handler_args["marker"] exists: a crash loop that can end."""

    def setup(self, device: str) -> None:
        marker = self.handler_args["marker"]
        if os.path.exists(marker):
            raise RuntimeError(f"refusing to load while {marker} exists")

    def predict(self, items: list[Any]) -> list[Any]:
        return [{"item": item, "pid": os.getpid()} for item in items]


class Leaky(Handler):
    """Keeps handler_args["leak_mb"] MiB more with every predict, never freed; reports its RSS."""

    def setup(self, device: str) -> None:
        import psutil

        self.process = psutil.Process()
        self.kept: list[bytes] = []

    def predict(self, items: list[Any]) -> list[Any]:
        self.kept.append(b"\x01" * (int(self.handler_args["leak_mb"]) * 2**20))  # written: resident
        rss_mib = self.process.memory_info().rss / 2**20
        return [{"item": item, "pid": os.getpid(), "rss_mib": rss_mib} for item in items]


class HogOnItem(Handler):
    """Writes handler_args["hog_mb"] MiB on the item "hog" (an OOM kill under a memory limit);
    echoes the rest."""

    def predict(self, items: list[Any]) -> list[Any]:
        if "hog" in items:
            self.hog = [b"\x01" * 2**20 for _ in range(int(self.handler_args["hog_mb"]))]
        return [{"item": item, "pid": os.getpid()} for item in items]


class TritonSimple(Handler):
    """Triton's `simple` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, row by row.
    Integers as strings in, strings out, as Triton's `simple_string` does."""

    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._one(item["INPUT0"], item["INPUT1"]) for item in items]

    def _one(self, left: list[Any], right: list[Any]) -> dict[str, Any]:
        as_text = isinstance(left[0], str)
        sums = [int(a) + int(b) for a, b in zip(left, right)]
        differences = [int(a) - int(b) for a, b in zip(left, right)]
        if as_text:
            return {"OUTPUT0": [str(v) for v in sums], "OUTPUT1": [str(v) for v in differences]}
        return {"OUTPUT0": sums, "OUTPUT1": differences}


class Describe(Handler):
    """Answers each item (a dict of its named inputs) with a JSON text of what it received."""

    def predict(self, items: list[Any], parameters: list[Any]) -> list[str]:
        import json

        return [
            json.dumps(
                {"item": item, "request": given.request, "outputs": given.outputs, "batch_size": len(items)},
                sort_keys=True,
            )
            for item, given in zip(items, parameters)
        ]


class Identity(Handler):
    """Answers each item with itself (Triton's identity models)."""

    def predict(self, items: list[Any]) -> list[Any]:
        return items


class Gated(Handler):
    """Holds each batch until the file handler_args["gate"] exists, then echoes it: a batch kept
    running, and requests kept queued behind it, for exactly as long as a test needs."""

    def predict(self, items: list[Any]) -> list[Any]:
        while not os.path.exists(self.handler_args["gate"]):
            time.sleep(0.01)
        return items


class Turns(Handler):
    """Holds a batch with the item "hold" until the file handler_args["gate"] exists (a minute at
    most), so the worker stays busy while a test queues requests behind it. Answers each item as
    "<item>#<n>", n its place in the order this worker ran items."""

    def setup(self, device: str) -> None:
        self.ran = 0

    def predict(self, items: list[Any]) -> list[str]:
        if "hold" in items:
            deadline = time.monotonic() + 60
            while not os.path.exists(self.handler_args["gate"]) and time.monotonic() < deadline:
                time.sleep(0.005)
        answers = []
        for item in items:
            self.ran += 1
            answers.append(f"{item}#{self.ran}")
        return answers


class Lengths(Handler):
    """An embedding model of sorts: each text as the vector [its length, 1.0]."""

    def predict(self, items: list[Any]) -> list[list[float]]:
        return [[float(len(item)), 1.0] for item in items]


class AsyncWait(Handler):
    """An async predict that waits on I/O: `wait_s`, or until the file `release` exists when it is
    set, then answers each item with the batches this worker held at once; "hang" never returns."""

    def setup(self, device: str) -> None:
        self.in_flight = 0
        self.most_in_flight = 0

    async def predict(self, items: list[Any]) -> list[Any]:
        import asyncio

        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            release = self.handler_args.get("release")
            while "hang" in items or (release is not None and not os.path.exists(release)):
                await asyncio.sleep(0.01)
            await asyncio.sleep(float(self.handler_args.get("wait_s", 0.0)))
        finally:
            self.in_flight -= 1
        return [{"item": item, "pid": os.getpid(), "most_in_flight": self.most_in_flight} for item in items]
