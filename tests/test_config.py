"""The YAML -> config function, and `inferd validate` as a user meets it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inferd.config import load_config, parse_config
from inferd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    return caught.value.problems


def test_every_problem_is_reported_at_once_with_its_yaml_path() -> None:
    found = problems(
        """
server: {port: 99999}
models:
  - {name: a, path: m.pt, max_batch_size: 0}
  - {name: b, handler: nocolon, device: gpu}
"""
    )
    assert any(p.startswith("server.port:") and "99999" in p for p in found)
    assert any(p.startswith("models[0].max_batch_size:") and "0" in p for p in found)
    assert any(p.startswith("models[1].handler:") and "'nocolon'" in p for p in found)
    assert any(p.startswith("models[1].device:") and "'gpu'" in p and "cuda:N" in p for p in found)
    assert len(found) == 4


def test_unknown_keys_get_did_you_mean() -> None:
    found = problems("server: {prot: 1}\nmodels: [{name: a, path: m.pt, max_batch: 4, inputs: [{name: x, shpe: [1]}]}]")
    assert "server.prot: unknown key; did you mean 'port'?" in found
    assert "models[0].max_batch: unknown key; did you mean 'max_batch_size'?" in found
    assert "models[0].inputs[0].shpe: unknown key; did you mean 'shape'?" in found


def test_model_needs_exactly_one_of_path_or_handler() -> None:
    assert any("exactly one of 'path'" in p for p in problems("models: [{name: a}]"))
    assert any("exactly one of 'path'" in p for p in problems("models: [{name: a, path: x.pt, handler: 'm:C'}]"))


def test_names_and_routes_are_unique_and_the_repeat_is_named() -> None:
    found = problems(
        """
models:
  - {name: a, path: x.pt}
  - {name: a, path: y.pt}
  - {name: b, path: z.pt, route: /embed}
  - {name: c, path: z.pt, route: /embed}
  - {name: d, path: z.pt, route: /models/e/predict}
  - {name: e, path: z.pt}
"""
    )
    assert found == [
        "models[1].name: 'a' is already the name of models[0]; choose another",
        "models[3].route: '/embed' is already the route of models[2]; choose another",
        "models[4].route: '/models/e/predict' is the default route of models[5]; choose another",
    ]


def test_a_bad_field_hides_neither_rules_nor_repeats_nor_other_entries() -> None:
    found = problems(
        """
models:
  - {name: a, max_batch_size: 0}
  - {name: a, path: x.pt, device: cpu, gpus: [0], gpu_memory_fraction: 2}
  - {name: b, path: x.pt, device: 'cuda:1', gpus: [1]}
"""
    )
    assert found == [
        "models[0].max_batch_size: Input should be greater than or equal to 1 (got 0)",
        "models[0]: give exactly one of 'path' (a model file), 'handler' (a class), 'pipeline' (models in turn) or 'split' (variants by weight)",
        "models[1].gpu_memory_fraction: Input should be less than or equal to 1 (got 2)",
        "models[1].gpus: goes with device 'cuda' (this model's device is 'cpu')",
        "models[1].gpu_memory_fraction: applies only to a CUDA device (this model's device is 'cpu')",
        "models[1].name: 'a' is already the name of models[0]; choose another",
        "models[2].gpus: goes with device 'cuda' ('cuda:1' already names one GPU)",
    ]


def test_messages_show_the_value_written_never_a_whole_section_or_a_class_name() -> None:
    found = problems("models: [5, {name: a, path: x.pt, inputs: [3], warmup: [{}]}]\nserver: {auth: {}}")
    assert found == [
        "server.auth: give api_keys_env (a variable's name) or api_keys_file (a path), and/or "
        "admin_keys_env or admin_keys_file for the admin routes",
        "models[0]: expected a mapping of keys to values (got 5)",
        "models[1].inputs[0]: expected a mapping of keys to values (got 3)",
        "models[1].warmup[0]: give exactly one of 'inputs' or 'zeros'",
    ]
    assert problems("models: []") == ["models: list at least one model"]
    assert problems("server: {port: 1}") == ["models: required but missing; list at least one model"]
    assert problems("models: [{name: a, path: x.pt}]\nsource: x") == ["source: unknown key; expected one of: server, models"]


def test_cpu_affinity_accepts_linux_list_form_and_yaml_lists() -> None:
    config = parse_config("models: [{name: a, path: x.pt, cpu_affinity: '0-3,8'}, {name: b, path: x.pt, cpu_affinity: [5, 6]}]")
    assert config.models[0].cpu_affinity == (0, 1, 2, 3, 8)
    assert config.models[1].cpu_affinity == (5, 6)
    assert any("runs backwards" in p for p in problems("models: [{name: a, path: x.pt, cpu_affinity: '3-1'}]"))


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    path.write_text("models: [{name: a, path: ../m.pt}]")
    model = load_config(path).models[0]
    assert model.path == tmp_path / "sub" / ".." / "m.pt"
    assert (model.workers_per_device, model.max_batch_size, model.device, model.url_path) == (1, 1, "cpu", "/models/a/predict")


def test_yaml_syntax_errors_name_the_line() -> None:
    assert problems("models: [\n  {name: a\n")[0].startswith("line ")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=60)


def test_validate_exits_2_with_path_naming_errors_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {name: a, path: x.pt, cpu_affinity: '0-4095', max_batch_size: -1}\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}: models[0].max_batch_size:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {name: a, path: x.pt, cpu_affinity: '4000'}\n")
    result = run_cli("serve", str(bad))
    assert result.returncode == 2
    assert f"{bad}: models[0].cpu_affinity: CPU 4000 does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_configs_are_valid() -> None:
    assert run_cli("validate", str(REPO / "configs" / "example.yaml")).returncode == 0
    result = run_cli("validate", "--schema-only", str(REPO / "configs" / "prod.yaml"))
    assert result.returncode == 0, result.stderr


def test_validate_names_missing_or_foreign_model_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    config = tmp_path / "c.yaml"
    config.write_text("models: [{name: a, path: missing.pt}, {name: b, path: notes.txt}]")
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    assert "models[0].path:" in result.stderr and "missing.pt: no such file" in result.stderr
    assert "models[1].path:" in result.stderr and "not a TorchScript or torch.export file" in result.stderr


def test_a_models_route_may_not_take_the_servers_own_paths() -> None:
    for route in ("/healthz", "/models", "/v2", "/v2/models/x/infer", "/admin/reload", "/", "/status.json"):
        found = problems(f"models: [{{name: a, path: x.pt, route: {route}}}]")
        assert len(found) == 1 and found[0].startswith("models[0].route:") and "server's own routes" in found[0], route
    assert parse_config("models: [{name: a, path: x.pt, route: /embed}]").models[0].url_path == "/embed"


def test_auth_takes_api_keys_admin_keys_or_both() -> None:
    admin_only = parse_config("server: {auth: {admin_keys_env: K}}\nmodels: [{name: a, path: x.pt}]")
    assert admin_only.server.auth is not None and admin_only.server.auth.api_keys_env is None
    found = problems("server: {auth: {protect_metrics: true}}\nmodels: [{name: a, path: x.pt}]")
    assert len(found) == 1 and "admin_keys_env" in found[0] and "api_keys_env" in found[0]


def test_busy_poll_defaults_to_a_millisecond_and_refuses_negatives() -> None:
    assert parse_config("models: [{name: a, path: x.pt}]").models[0].busy_poll_us == 1000
    assert parse_config("models: [{name: a, path: x.pt, busy_poll_us: 0}]").models[0].busy_poll_us == 0
    found = problems("models: [{name: a, path: x.pt, busy_poll_us: -5}]")
    assert len(found) == 1 and found[0].startswith("models[0].busy_poll_us:") and "-5" in found[0], found
    on_pipeline = problems("models: [{name: a, path: x.pt}, {name: p, pipeline: [a], busy_poll_us: 0}]")
    assert on_pipeline == [
        "models[1].busy_poll_us: a pipeline has no workers of its own; set busy_poll_us on the model of each step"
    ]
