"""The pool's settings in the config: `load`, `idle_unload_s`, `server.pool`; and `inferd validate`
on them as a user meets it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inferd.config import parse_config
from inferd.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    return caught.value.problems


def test_defaults_are_todays_behaviour() -> None:
    config = parse_config("models: [{name: a, path: m.pt}]")
    assert config.models[0].load == "eager" and config.models[0].idle_unload_s is None
    assert config.server.pool.max_loaded_models is None and config.server.pool.max_memory_mb == {}


def test_pool_settings_parse() -> None:
    config = parse_config(
        """
server: {pool: {max_loaded_models: 2, max_memory_mb: {cpu: 4096, "cuda:0": 20000}}}
models:
  - {name: a, path: m.pt, load: lazy, idle_unload_s: 30}
  - {name: b, path: m.pt}
"""
    )
    assert config.models[0].load == "lazy" and config.models[0].idle_unload_s == 30
    assert config.server.pool.max_bytes == {"cpu": 4096 * 2**20, "cuda:0": 20000 * 2**20}


def test_each_bad_value_is_named_at_its_yaml_path() -> None:
    found = problems(
        """
server: {pool: {max_loaded_models: 0, max_memory_mb: {gpu: 10, cpu: 0}}}
models:
  - {name: a, path: m.pt, load: sometimes}
  - {name: b, path: m.pt, load: lazy, idle_unload_s: -1}
"""
    )
    assert any(p.startswith("server.pool.max_loaded_models:") and "(got 0)" in p for p in found), found
    assert any(p.startswith("server.pool.max_memory_mb:") and "'gpu' is not a device" in p for p in found), found
    assert any(p.startswith("models[0].load:") and "'eager' or 'lazy'" in p for p in found), found
    assert any(p.startswith("models[1].idle_unload_s:") and "(got -1)" in p for p in found), found


def test_a_zero_memory_budget_is_refused() -> None:
    found = problems("server: {pool: {max_memory_mb: {cpu: 0}}}\nmodels: [{name: a, path: m.pt}]")
    assert any("server.pool.max_memory_mb" in p and "1 or more" in p for p in found), found


def test_idle_unload_needs_a_lazy_model() -> None:
    found = problems("models: [{name: a, path: m.pt, idle_unload_s: 60}]")
    assert found == [
        "models[0].idle_unload_s: needs 'load: lazy' (an eager model unloaded when idle would not load again by itself)"
    ]


def test_more_eager_models_than_the_budget_is_refused() -> None:
    found = problems(
        """
server: {pool: {max_loaded_models: 1}}
models:
  - {name: a, path: m.pt}
  - {name: b, path: m.pt}
  - {name: c, path: m.pt, load: lazy}
  - {name: p, pipeline: [a, b]}
"""
    )
    assert found == [
        "server.pool.max_loaded_models: 1, but 2 models load at start (load: eager, the default): ['a', 'b']; "
        "raise it, or set 'load: lazy' on some of them"
    ]


def test_a_pipeline_takes_no_pool_settings() -> None:
    found = problems("models:\n  - {name: a, path: m.pt}\n  - {name: p, pipeline: [a], load: lazy, idle_unload_s: 5}")
    assert "models[1].load: a pipeline has no workers of its own; set load on the model of each step" in found
    assert any(p.startswith("models[1].idle_unload_s: a pipeline has no workers") for p in found), found


def test_unknown_pool_keys_get_did_you_mean() -> None:
    found = problems("server: {pool: {max_models: 2}}\nmodels: [{name: a, path: m.pt, lazy: true}]")
    assert "server.pool.max_models: unknown key; did you mean 'max_loaded_models'?" in found
    assert any(p.startswith("models[0].lazy: unknown key") for p in found), found


def test_validate_reports_the_pool_problems_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "server: {pool: {max_loaded_models: 1}}\n"
        "models:\n  - {name: a, path: m.pt}\n  - {name: b, path: m.pt}\n  - {name: c, path: m.pt, idle_unload_s: 5}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "inferd", "validate", "--schema-only", str(config)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert f"{config}: server.pool.max_loaded_models: 1, but 2 models load at start" in run.stderr
    assert f"{config}: models[2].idle_unload_s: needs 'load: lazy'" in run.stderr
    assert "Traceback" not in run.stderr
