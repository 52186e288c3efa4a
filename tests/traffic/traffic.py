"""Helpers for the traffic tests: many requests at once over real HTTP, and metric samples."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer

VARIANT = "X-Inferd-Variant"
THREADS = 8


@dataclass(frozen=True)
class Answer:
    status: int
    variant: str | None
    tag: str | None  # the Echo handler's tag: which model or version computed the answer


def send_many(
    server: RunningServer, path: str, count: int, headers: Callable[[int], dict[str, str]] | None = None
) -> list[Answer]:
    """`count` native requests from THREADS client threads, each with `headers(n)`."""

    def send(client: httpx.Client, n: int) -> Answer:
        response = client.post(path, json={"inputs": [f"r{n}"]}, headers=headers(n) if headers else None)
        body = response.json()
        tag = body["outputs"][0].get("tag") if response.status_code == 200 else None
        return Answer(response.status_code, response.headers.get(VARIANT), tag)

    clients = [server.client() for _ in range(THREADS)]
    try:
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(lambda n: send(clients[n % THREADS], n), range(count)))
    finally:
        for client in clients:
            client.close()


def shares(answers: list[Answer]) -> dict[str, float]:
    counts = Counter(answer.variant for answer in answers)
    return {str(variant): count / len(answers) for variant, count in counts.items()}


def sample(server: RunningServer, name: str, /, **labels: str) -> float:
    """One sample of /metrics (0 where the series does not exist yet)."""
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


def samples(server: RunningServer, name: str) -> list[dict[str, Any]]:
    return [
        {**found.labels, "value": found.value}
        for family in text_string_to_metric_families(server.get("/metrics").text)
        for found in family.samples
        if found.name == name
    ]
