"""The status page's rows read the model pool's state: a lazy model not loaded yet is "unloaded",
with its load mode, not a model whose workers are late."""

from __future__ import annotations

from inferd.config import parse_config
from inferd.daemon import Daemon
from inferd.placement import Host, plan
from inferd.status import StatusBoard
from tests.conftest import HANDLERS

CONFIG = f"""
models:
  - {{name: eager, handler: "{HANDLERS}:Echo"}}
  - {{name: lazy, handler: "{HANDLERS}:Echo", load: lazy}}
"""


def test_a_lazy_model_not_loaded_is_an_unloaded_row() -> None:
    config = parse_config(CONFIG, "status.yaml")
    daemon = Daemon(config, plan(config, Host.detect()))
    rows = {row["model"]: row for row in StatusBoard(daemon).snapshot()["models"]}
    assert (rows["eager"]["state"], rows["lazy"]["state"]) == ("loading", "unloaded")
    assert rows["lazy"]["workers"] == []
    assert daemon.ready is False  # the eager model has no worker yet; the lazy one never holds it back
