"""The status document from a real Daemon built from a config (its workers not started: every model
is still loading), and the GPU memory it sums from workers' readings."""

from __future__ import annotations

import os

from inferd.config import parse_config
from inferd.daemon import Daemon
from inferd.messages import GpuMemory
from inferd.placement import Host, plan
from inferd.status import StatusBoard, gpu_memory, worker_view
from tests.conftest import HANDLERS

CONFIG = f"""
models:
  - {{name: first, handler: "{HANDLERS}:Echo"}}
  - {{name: second, handler: "{HANDLERS}:Echo", workers_per_device: 2}}
  - {{name: both, pipeline: [first, second]}}
"""


def test_every_model_is_a_row_with_its_state_kind_and_workers_before_any_worker_is_up() -> None:
    config = parse_config(CONFIG, "status.yaml")
    status = StatusBoard(Daemon(config, plan(config, Host.detect()))).snapshot()
    rows = {row["model"]: row for row in status["models"]}
    assert list(rows) == ["first", "second", "both"]
    assert {name: (row["state"], row["kind"], row["version"]) for name, row in rows.items()} == {
        "first": ("loading", "batched", None),
        "second": ("loading", "batched", None),
        "both": ("unavailable", "pipeline", None),  # as its steps have no ready worker
    }
    assert rows["both"]["reason"] and rows["both"]["workers"] == [] == rows["first"]["workers"]  # none started
    assert (rows["second"]["queue_depth"], rows["second"]["requests_per_s"]) == (0, None)  # no window yet
    assert len(status["machine"]["cpus"]) == os.cpu_count()
    assert status["rates_window_s"] is None


def test_gpu_memory_is_summed_per_device_over_the_models_current_workers() -> None:
    gib = 1 << 30
    readings = {
        ("m", "cuda:0/0"): GpuMemory("cuda:0", 1 * gib, 2 * gib),
        ("m", "cuda:0/1"): GpuMemory("cuda:0", 1 * gib, 3 * gib),
        ("m", "cuda:1/0"): GpuMemory("cuda:1", 1 * gib, 1 * gib),
        ("m", "cuda:2/0"): GpuMemory("cuda:2", 9 * gib, 9 * gib),  # a slot a reload removed
        ("other", "cuda:0/0"): GpuMemory("cuda:0", 9 * gib, 9 * gib),
    }
    assert gpu_memory("m", ["cuda:0/0", "cuda:0/1", "cuda:1/0"], readings) == [
        {"device": "cuda:0", "allocated_bytes": 2 * gib, "reserved_bytes": 5 * gib},
        {"device": "cuda:1", "allocated_bytes": 1 * gib, "reserved_bytes": 1 * gib},
    ]
    assert gpu_memory("m", ["cpu:0/0"], readings) == []


def test_a_workers_device_is_read_from_its_slot() -> None:
    assert worker_view({"slot": "cpu:0/1", "cpus": [3]})["device"] == "cpu"
    assert worker_view({"slot": "cuda:1/0", "cpus": []})["device"] == "cuda:1"


def test_each_version_is_a_row_of_its_model() -> None:
    config = parse_config(
        f"""
models:
  - name: echo
    versions:
      - {{version: 1, handler: "{HANDLERS}:Echo"}}
      - {{version: 2, handler: "{HANDLERS}:Echo"}}
""",
        "status.yaml",
    )
    status = StatusBoard(Daemon(config, plan(config, Host.detect()))).snapshot()
    assert [(row["model"], row["version"]) for row in status["models"]] == [("echo", "1"), ("echo", "2")]
