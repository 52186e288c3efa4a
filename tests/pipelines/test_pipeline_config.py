"""Pipeline configs: chains and small graphs that pass, and each broken one named at its YAML path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from inferd.config import check_config_text
from inferd.pipeline_graph import PIPELINE_INPUT, run_order

STEPS = """
models:
  - {name: decode, handler: steps.py:Parse}
  - name: net
    path: net.pt
    inputs: [{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}]
    outputs: [{name: logits, datatype: FP32, shape: [-1, 1000]}]
  - name: head
    path: head.pt
    inputs: [{name: logits, datatype: FP32, shape: [-1, 1000]}]
    outputs: [{name: score, datatype: FP32, shape: [-1, 1]}]
  - {name: top5, handler: steps.py:Total}
"""


def problems(pipelines: str) -> list[str]:
    return list(check_config_text(STEPS + pipelines).problems)


def test_a_chain_is_linked_step_to_step() -> None:
    check = check_config_text(STEPS + "  - {name: classify, pipeline: [decode, net, top5]}\n")
    assert check.problems == ()
    assert check.config is not None
    steps = check.config.models[-1].pipeline
    assert steps is not None
    assert [(s.id, s.after) for s in steps] == [("decode", (PIPELINE_INPUT,)), ("net", ("decode",)), ("top5", ("net",))]


def test_a_fan_out_and_join_runs_each_step_after_its_sources() -> None:
    check = check_config_text(
        STEPS
        + """
  - name: both
    pipeline:
      - {model: top5, id: join, after: [left, right]}
      - {model: decode, after: input}
      - {model: net, id: left, after: decode}
      - {model: net, id: right, after: decode}
      - {model: top5, id: last, after: join}
"""
    )
    assert check.problems == ()
    assert check.config is not None
    steps = check.config.models[-1].pipeline
    assert steps is not None
    order = [s.id for s in run_order(steps)]
    assert order.index("decode") < order.index("left") < order.index("join") < order.index("last")


def test_an_unknown_step_is_named_with_the_closest_model() -> None:
    assert problems("  - {name: classify, pipeline: [decode, nett, top5]}\n") == [
        "models[4].pipeline[1]: no model named 'nett' in this config; did you mean 'net'?"
    ]


def test_a_cycle_is_named() -> None:
    found = problems("""
  - name: loop
    pipeline:
      - {model: decode, after: [top5]}
      - {model: top5, after: [decode]}
""")
    assert found == [
        "models[4].pipeline: steps ['decode', 'top5'] form a cycle; "
        "a step may only take outputs of steps that do not depend on it"
    ]


def test_outputs_that_do_not_fit_the_next_inputs_are_named() -> None:
    found = problems("  - {name: wrong, pipeline: [head, net]}\n")
    assert found == [
        "models[4].pipeline[1]: model 'net' takes 'image' of shape [-1, 3, 224, 224], but the step before gives "
        "[-1, 1] (-1 = any)"
    ]


def test_fitting_declared_outputs_pass() -> None:
    assert problems("  - {name: fine, pipeline: [net, head]}\n") == []


def test_every_kind_of_broken_step_is_reported_together() -> None:
    found = problems("""
  - name: broken
    device: cuda
    pipeline:
      - {model: decode}
      - {model: decode}
      - {model: net, after: [decod]}
  - {name: nested, pipeline: [broken]}  # 'broken' has its own problems: nothing more to say here
  - {name: unused, pipeline: [{model: decode}, {model: top5, after: input}]}
  - {name: empty, pipeline: []}
""")
    assert found == [
        "models[4].device: a pipeline has no workers of its own; set device on the model of each step",
        "models[6].pipeline[0]: the output of step 'decode' is never used; the last step answers the request, "
        "so list this step in a later step's 'after' or remove it",
        "models[7].pipeline: a pipeline lists at least one step, e.g. [decode, network, top5] (got [])",
    ]


def test_duplicate_ids_and_unknown_links_are_named() -> None:
    assert problems("  - {name: twice, pipeline: [decode, decode, top5]}\n") == [
        "models[4].pipeline[1].id: 'decode' is already the id of models[4].pipeline[0]; give this step an 'id' of its own",
    ]
    assert problems("  - {name: link, pipeline: [decode, {model: top5, after: [decod]}]}\n") == [
        "models[4].pipeline[1].after: 'decod' is not a step of this pipeline; did you mean 'decode'?",
    ]


def test_a_pipeline_of_a_pipeline_is_refused() -> None:
    found = problems("""
  - {name: inner, pipeline: [decode, top5]}
  - {name: outer, pipeline: [inner]}
""")
    assert found == ["models[5].pipeline[0]: 'inner' is a pipeline; list its steps here instead"]


def test_validate_names_each_problem_and_fails(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        STEPS.replace("steps.py", str(Path(__file__).with_name("steps.py")))
        + "  - {name: classify, pipeline: [decode, nett]}\n"
        + "  - name: other\n    pipeline: [{model: decode, after: x}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "inferd", "validate", str(config)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "models[4].pipeline[1]: no model named 'nett' in this config; did you mean 'net'?" in result.stderr
    assert "models[5].pipeline[0].after: 'x' is not a step of this pipeline" in result.stderr
