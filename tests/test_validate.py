"""`inferd validate` as a user meets it: real subprocess runs on configs with many problems each.

Every problem is reported in one run, each at its YAML path: the schema's, the model files', the
handlers', the placement's, and with --load what starting and warming up each model finds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from tests.conftest import EXAMPLE_MODELS, HANDLERS, example_config

HANDLER_MODULES = {
    "needs_missing.py": "import no_such_dependency_for_inferd  # noqa\n",
    "plain.py": "class Model:\n    pass\n",
    "raises_on_import.py": "raise RuntimeError('cannot read settings.toml')\n",
    "exits_on_import.py": "import os\nos._exit(9)\n",
}


def write_config(tmp_path: Path, text: str) -> Path:
    for name, source in HANDLER_MODULES.items():
        (tmp_path / name).write_text(source)
    config = tmp_path / "inferd.yaml"
    config.write_text(
        textwrap.dedent(text).replace("{HANDLERS}", str(HANDLERS)).replace("{MODELS}", str(EXAMPLE_MODELS))
    )
    return config


def run_inferd(*args: str, cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=timeout_s, cwd=cwd
    )


def problems_of(result: subprocess.CompletedProcess[str], config: Path) -> list[str]:
    """The reported problems without the file name each starts with; fails on anything else."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if " WARNING " not in line]
    assert lines[0] == "inferd: invalid config", result.stderr
    assert all(line.startswith(f"{config}: ") for line in lines[1:]), result.stderr
    return [line.removeprefix(f"{config}: ") for line in lines[1:]]


def test_validate_reports_schema_file_handler_and_placement_problems_in_one_run(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        models:
          - {name: broken, path: tiny.pt, max_batch_size: 0}
          - {name: nofile, path: missing.pt, cpu_affinity: "4000"}
          - {name: nohandlerfile, handler: "absent.py:Model"}
          - {name: noclass, handler: "{HANDLERS}:Nope"}
          - {name: nomodule, handler: "no_such_module_for_inferd:Model"}
          - {name: baddep, handler: "needs_missing:Model"}
          - {name: notahandler, handler: "plain:Model"}
          - {name: raises, handler: "raises_on_import.py:Model"}
          - {name: exits, handler: "exits_on_import.py:Model"}
          - {name: nofile, path: "{MODELS}/tiny.pt", device: "cuda:99"}
          - {name: echo, handler: "{HANDLERS}:Echo"}
          - {name: tiny, path: "{MODELS}/tiny.pt"}
        """,
    )
    found = problems_of(run_inferd("validate", str(config), cwd=tmp_path), config)
    last_cpu = (os.cpu_count() or 1) - 1
    assert found[:3] == [
        "models[0].max_batch_size: Input should be greater than or equal to 1 (got 0)",
        f"models[1].path: {tmp_path}/missing.pt: no such file",
        f"models[1].cpu_affinity: CPU 4000 does not exist (this machine has 0-{last_cpu})",
    ]
    assert found[3] == f"models[2].handler: handler file {tmp_path}/absent.py does not exist"
    assert found[4].startswith(f"models[3].handler: handler '{HANDLERS}:Nope': {HANDLERS} has no attribute 'Nope'")
    assert "Echo" in found[4]  # the classes it could have meant
    assert found[5:11] == [
        f"models[4].handler: handler module 'no_such_module_for_inferd' not found (searched {tmp_path} and sys.path)",
        "models[5].handler: handler module 'needs_missing' failed to import 'no_such_dependency_for_inferd': "
        "No module named 'no_such_dependency_for_inferd'",
        "models[6].handler: handler 'plain:Model': Model is not a subclass of inferd.Handler",
        f"models[7].handler: handler file {tmp_path}/raises_on_import.py raised on import: "
        "RuntimeError: cannot read settings.toml",
        "models[8].handler: the check process exited with status 9 before it reported",
        "models[9].name: 'nofile' is already the name of models[1]; choose another",
    ]
    assert found[11].startswith("models[9].device: GPU cuda:99 does not exist (this machine has ")
    assert len(found) == 12


def test_schema_only_checks_nothing_on_this_machine(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        models:
          - {name: a, path: missing.pt, cpu_affinity: "4000", max_batch_size: 0}
          - {name: a, handler: "exits_on_import.py:Model", device: "cuda:99"}
        """,
    )
    found = problems_of(run_inferd("validate", "--schema-only", str(config), cwd=tmp_path), config)
    assert found == [
        "models[0].max_batch_size: Input should be greater than or equal to 1 (got 0)",
        "models[1].name: 'a' is already the name of models[0]; choose another",
    ]


def test_validate_load_points_each_failure_at_the_yaml_to_change(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        models:
          - {name: narrow, path: "{MODELS}/tiny.pt", inputs: [{name: input, datatype: FP32, shape: [-1, 17]}]}
          - name: samples
            path: "{MODELS}/tiny.pt"
            inputs: [{name: input, shape: [-1, 16]}]
            warmup: [{zeros: {input: [2, 16]}}, {zeros: {input: [2, 3]}}]
          - {name: ints, path: "{MODELS}/classifier.pt2", inputs: [{name: image, datatype: INT64, shape: [-1, 3, 32, 32]}]}
          - {name: faulty, handler: "{HANDLERS}:Faulty", warmup: [{inputs: [ok]}, {inputs: [bad]}]}
          - {name: crash, handler: "{HANDLERS}:CrashOnLoad"}
          - {name: broken, handler: "{HANDLERS}:Echo", batch_timeout_ms: -1}
          - {name: missing, handler: "{HANDLERS}:Missing"}
          - {name: echo, handler: "{HANDLERS}:Echo", warmup: [{inputs: [hello]}]}
          - {name: tiny, path: "{MODELS}/tiny.pt", inputs: [{name: input, shape: [-1, 16]}]}
        """,
    )
    found = problems_of(run_inferd("validate", "--load", str(config), cwd=tmp_path), config)
    assert found[0].startswith("models[0].inputs[0].shape: [-1, 17] does not fit the model: RuntimeError: ")
    assert "1x17" in found[0] and "\n" not in found[0]  # the operation that failed, not TorchScript's traceback
    assert found[1].startswith("models[1].warmup[1]: fails on the model: RuntimeError: ") and "2x3" in found[1]
    assert found[2].startswith("models[2].inputs[0].datatype: INT64 does not fit the model (FP32 does): ")
    assert found[3:6] == [
        "models[3].warmup[1]: fails on the model: ValueError: the item 'bad' is not allowed",
        "models[4].handler: could not be set up on cpu: RuntimeError: weights file is corrupt",
        "models[5].batch_timeout_ms: Input should be greater than or equal to 0 (got -1)",
    ]
    assert found[6].startswith(
        f"models[6].handler: handler '{HANDLERS}:Missing': {HANDLERS} has no attribute 'Missing'"
    )
    assert len(found) == 7


def test_validate_load_bounds_a_model_that_never_warms_up(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        models:
          - {name: hangs, handler: "{HANDLERS}:Faulty", warmup: [{inputs: [hang]}]}
          - {name: crash, handler: "{HANDLERS}:CrashOnLoad"}
        """,
    )
    found = problems_of(run_inferd("validate", "--load", "--timeout-s", "10", str(config), cwd=tmp_path), config)
    assert found == [
        "models[0].handler: did not load and warm up within 10 s (more time: --timeout-s)",
        "models[1].handler: could not be set up on cpu: RuntimeError: weights file is corrupt",
    ]


def test_validate_load_passes_the_example_models(tmp_path: Path, example_models: Path) -> None:
    document = yaml.safe_load(example_config())
    document["models"].append({"name": "exported", "path": f"{example_models}/classifier.pt2"})
    config = tmp_path / "example.yaml"
    config.write_text(yaml.safe_dump(document))
    result = run_inferd("validate", "--load", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{config}: OK (5 model(s); each loaded and warmed up)\n"


def test_the_validating_process_runs_no_user_code_and_never_imports_torch(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        models:
          - {name: echo, handler: "{HANDLERS}:Echo"}
          - {name: tiny, path: "{MODELS}/tiny.pt", inputs: [{name: input, shape: [-1, 17]}]}
        """,
    )
    script = textwrap.dedent(
        """
        import sys
        from inferd.errors import ConfigError
        from inferd.validation import validate
        try:
            validate(sys.argv[1], load=True)
        except ConfigError as error:
            print(*error.problems, sep="\\n")
        print("torch" in sys.modules, [name for name in sys.modules if name.startswith("inferd_handler")])
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("models[1].inputs[0].shape: [-1, 17] does not fit the model")
    assert lines[1] == "False []"


def test_serve_on_a_bad_config_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        server: {port: 99999}
        models:
          - {name: a, path: x.pt, max_batch: 4}
          - {name: a, handler: "m:C", device: cpu, gpus: [0]}
        """,
    )
    found = problems_of(run_inferd("serve", str(config), cwd=tmp_path, timeout_s=120), config)
    assert found == [
        "server.port: Input should be less than or equal to 65535 (got 99999)",
        "models[0].max_batch: unknown key; did you mean 'max_batch_size'?",
        "models[1].gpus: goes with device 'cuda' (this model's device is 'cpu')",
        "models[1].name: 'a' is already the name of models[0]; choose another",
    ]
