"""Load for chaos tests: client threads with their own httpx clients, bounded in count and time,
recording every request's outcome; and the figures a chaos test prints."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

Body = Callable[[int, int], Any]  # (client number, request number) -> JSON body


@dataclass(frozen=True)
class Outcome:
    client: int
    sent_at: float  # time.monotonic()
    latency_s: float
    status: int | None  # None: no HTTP answer
    error: str | None  # the transport error's class name, when there was no answer
    json: Any = None


@dataclass
class Load:
    """`clients` threads POSTing `body(client, n)` to `path` back to back (or at `interval_s` each),
    until stop(), `duration_s`, or `max_requests_per_client`."""

    url: str
    path: str
    body: Body
    clients: int
    duration_s: float
    timeout_s: float = 30.0
    interval_s: float = 0.0
    max_requests_per_client: int = 100_000
    stop_on_connect_error: bool = False
    keep_json: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> list[Outcome]:
        """Wait for every client: each request is bounded by `timeout_s`, so this is bounded too."""
        deadline = time.monotonic() + self.duration_s + self.timeout_s + 10
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sum(t.is_alive() for t in self._threads)
        assert alive == 0, f"{alive} client thread(s) still waiting: a request hung"
        return self.outcomes

    def _client(self, number: int) -> None:
        end = self.started + self.duration_s
        next_send = self.started + (self.interval_s * number / self.clients)
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            for n in range(self.max_requests_per_client):
                if self.interval_s:
                    self._stop.wait(max(0.0, next_send - time.monotonic()))
                    next_send += self.interval_s
                if self._stop.is_set() or time.monotonic() >= end:
                    return
                outcome = self._send(client, number, n)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.error == "ConnectError" and self.stop_on_connect_error:
                    return

    def _send(self, client: httpx.Client, number: int, n: int) -> Outcome:
        sent_at = time.monotonic()
        try:
            answer = client.post(self.path, json=self.body(number, n))
        except httpx.HTTPError as error:
            return Outcome(number, sent_at, time.monotonic() - sent_at, None, type(error).__name__)
        latency_s = time.monotonic() - sent_at
        keep = self.keep_json or answer.status_code != 200
        document = answer.json() if keep and answer.headers.get("content-type") == "application/json" else None
        return Outcome(number, sent_at, latency_s, answer.status_code, None, document)


def by_status(outcomes: list[Outcome]) -> dict[str, int]:
    counts = Counter(str(o.status) if o.status is not None else o.error for o in outcomes)
    return dict(sorted(counts.items()))


def percentile_ms(latencies_s: list[float], q: float) -> float:
    if not latencies_s:
        return float("nan")
    ordered = sorted(latencies_s)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_figures(outcomes: list[Outcome], status: int | None = None) -> dict[str, float]:
    latencies = [o.latency_s for o in outcomes if o.status is not None and (status is None or o.status == status)]
    return {
        "p50_ms": round(percentile_ms(latencies, 0.50), 1),
        "p99_ms": round(percentile_ms(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies, default=float("nan")), 1),
    }


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


REPORTED: list[tuple[str, dict[str, Any]]] = []


def report(name: str, figures: dict[str, Any]) -> None:
    """Print a chaos test's figures (seen with `pytest -s`) and keep them for the run's summary."""
    REPORTED.append((name, figures))
    print(f"\nCHAOS {name}:")
    for key, value in figures.items():
        print(f"  {key}: {value}")
