"""Shadow copies that must not touch the primary answer: a candidate that fails every copy, and
one so slow that it is saturated, so that further copies are dropped rather than queued."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, start_server, wait_until

from .traffic import sample

COPY_S = 20  # the slow candidate's time per copy: far longer than the requests sent meanwhile
CONFIG = f"""
models:
  - {{name: fast, handler: "{{HANDLERS}}:Echo", handler_args: {{tag: fast}}}}
  - {{name: slow, handler: "{{HANDLERS}}:Echo", handler_args: {{tag: slow, delay_s: {COPY_S}}}}}
  - {{name: faulty, handler: "{{HANDLERS}}:Faulty"}}
  - name: to_slow
    split: {{variants: [{{model: fast, weight: 1}}], shadow: {{model: slow, max_inflight: 1}}}}
  - name: to_faulty
    split: {{variants: [{{model: fast, weight: 1}}], shadow: {{model: faulty}}}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("shadow"), CONFIG)
    yield running
    assert running.stop() == 0
    assert_clean_log(running.log())


def shadow(server: RunningServer, split: str, variant: str, outcome: str) -> float:
    return sample(server, "inferd_shadow_requests_total", split=split, variant=variant, outcome=outcome)


def test_a_failing_candidate_never_fails_the_primary(server: RunningServer) -> None:
    for _ in range(5):
        answer = server.post("/models/to_faulty/predict", {"inputs": ["bad"]})  # Faulty raises on "bad"
        assert answer.status_code == 200 and answer.json()["outputs"][0]["tag"] == "fast"

    def settled() -> bool:
        return shadow(server, "to_faulty", "faulty", "error") + shadow(server, "to_faulty", "faulty", "dropped") == 5

    wait_until(settled, 30, "each copy failed or dropped")
    assert shadow(server, "to_faulty", "faulty", "error") >= 1  # the first copy finds the candidate idle
    assert shadow(server, "to_faulty", "faulty", "ok") == 0
    assert sample(server, "inferd_shadow_duration_seconds_count", split="to_faulty", variant="faulty") >= 1
    assert sample(server, "inferd_requests_total", model="to_faulty", code="200") == 5


def test_copies_to_a_saturated_candidate_are_dropped_not_queued(server: RunningServer) -> None:
    assert server.post("/models/to_slow/predict", {"inputs": ["first"]}).status_code == 200
    wait_until(lambda: sample(server, "inferd_inflight_requests", model="slow") == 1, 30, "the first copy at work")

    for n in range(10):
        answer = server.post("/models/to_slow/predict", {"inputs": [f"r{n}"]})
        assert answer.status_code == 200 and answer.json()["outputs"][0]["tag"] == "fast"

    assert shadow(server, "to_slow", "slow", "dropped") == 10
    assert sample(server, "inferd_queue_depth", model="slow") == 0  # nothing of them waits there
    assert sample(server, "inferd_inflight_requests", model="slow") == 1
