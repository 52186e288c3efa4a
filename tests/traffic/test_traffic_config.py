"""Versions and splits in the config: what a good file becomes, and every problem of a bad one at
its YAML path (`inferd validate` and the pure check alike); the router's choices as pure logic."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from inferd.config import check_config_text
from inferd.traffic_split import WeightedTurns, sticky_index
from inferd.versions import VersionTable, served_models
from tests.conftest import HANDLERS

GOOD = f"""
models:
  - name: echo
    max_batch_size: 4
    handler_args: {{tag: base}}
    versions:
      - {{version: 1, handler: "{HANDLERS}:Echo"}}
      - {{version: 2, handler: "{HANDLERS}:Echo", max_batch_size: 8, handler_args: {{tag: two}}}}
  - {{name: other, handler: "{HANDLERS}:Echo", max_batch_size: 4}}
  - name: ab
    max_batch_size: 4
    split:
      key_header: X-User
      variants: [{{model: echo, version: 1, weight: 70}}, {{model: other, weight: 30}}]
      shadow: {{model: echo, version: 2, share: 0.5}}
"""


def problems(text: str) -> list[str]:
    return list(check_config_text(text).problems)


def test_each_version_is_served_with_what_it_inherits_and_overrides() -> None:
    config = check_config_text(GOOD).config
    assert config is not None
    served = {m.name: m for m in served_models(config.models)}

    assert list(served) == ["echo@1", "echo@2", "other", "ab"]
    assert (served["echo@1"].max_batch_size, served["echo@1"].handler_args) == (4, {"tag": "base"})
    assert (served["echo@2"].max_batch_size, served["echo@2"].handler_args) == (8, {"tag": "two"})
    assert served["echo@2"].url_path == "/models/echo/versions/2/predict"
    table = VersionTable.of(config.models)
    assert table.served("echo") == "echo@2"  # the highest, without default_version
    assert (table.served("echo", "1"), table.served("echo@1"), table.served("echo", "3")) == ("echo@1", "echo@1", None)
    assert (table.served("other"), table.served("other", "1"), table.served("other", "2")) == ("other", "other", None)
    assert table.routes == {"/models/echo/predict": "echo@2"}


def test_versions_are_ordered_by_value_where_they_are_numbers() -> None:
    text = GOOD.replace("version: 1,", "version: 10,").replace("version: 2,", "version: 9,")  # the split's too
    config = check_config_text(text).config
    assert config is not None
    assert VersionTable.of(config.models).served("echo") == "echo@10"


BAD_VERSIONS = f"""
models:
  - name: echo
    path: x.pt
    default_version: 7
    versions:
      - {{version: 1, handler: "{HANDLERS}:Echo", max_batch_size: -1, route: /x}}
      - {{version: 1, path: a.pt, handler: "{HANDLERS}:Echo"}}
      - {{handler: "{HANDLERS}:Echo"}}
  - {{name: plain, handler: "{HANDLERS}:Echo", version: 3}}
  - name: inherits
    max_batch_size: -3
    versions: [{{version: 1, handler: "{HANDLERS}:Echo"}}]
"""


def test_version_problems_are_named_at_their_paths() -> None:
    assert problems(BAD_VERSIONS) == [
        "models[0].versions[0].max_batch_size: Input should be greater than or equal to 1 (got -1)",
        "models[0].path: a model with versions takes its path in each version, not in the model's entry",
        "models[0].versions[0].route: set on the model's entry, not per version",
        "models[0].versions[1].version: '1' is already the version of versions[0]; choose another",
        "models[0].versions[1]: give exactly one of 'path' (a model file), 'handler' (a class), 'pipeline' (models in turn) or 'split' (variants by weight)",
        "models[0].versions[2].version: required but missing; name the version, e.g. version: 2",
        "models[0].default_version: '7' is not one of the versions ['1']",
        "models[1].version: goes with 'versions' (this model lists none)",
        "models[2].max_batch_size: Input should be greater than or equal to 1 (got -3)",  # once, where written
    ]


BAD_SPLIT = f"""
models:
  - name: echo
    max_batch_size: 2
    versions: [{{version: 1, handler: "{HANDLERS}:Echo"}}]
  - {{name: plain, handler: "{HANDLERS}:Echo", max_batch_size: 8}}
  - {{name: gen, handler: "{HANDLERS}:Echo", generation: {{}}}}
  - name: ab
    max_batch_size: 8
    split:
      variants:
        - {{model: echo, version: 5, weight: 1}}
        - {{model: plian, weight: 1}}
        - {{model: ab, weight: 0}}
        - {{model: plain, weight: 0}}
        - {{model: plain, weight: 0}}
        - {{model: echo, weight: 1}}
        - {{model: gen, weight: 1}}
      shadow: {{model: nope}}
  - name: zero
    split: {{variants: [{{model: plain, weight: 0}}]}}
  - name: shaped
    device: cpu
    split:
      key_header: "not a header"
      variants: [{{model: plain, weight: -1}}]
      shadow: {{model: plain, share: 2}}
"""


def test_split_problems_are_named_at_their_paths() -> None:
    assert problems(BAD_SPLIT) == [
        "models[3].split.variants[0].version: model 'echo' has no version '5' (it has ['1'])",
        "models[3].split.variants[1].model: no model named 'plian'; did you mean 'plain'?",
        "models[3].split.variants[2].model: 'ab' is a split itself; list its variants here instead",
        "models[3].split.variants[4]: 'plain' is already variants[3]; give it one weight",
        "models[3].split.variants[5]: 'echo' takes at most 2 items per request (max_batch_size), "
        "fewer than this split's max_batch_size 8; lower the split's",
        "models[3].split.variants[6].model: 'gen' is a generative model; a split takes models that answer whole requests",
        "models[3].split.shadow.model: no model named 'nope'; known: ['ab', 'echo', 'gen', 'plain', 'zero']",
        "models[4].split.variants: every weight is 0; give at least one variant a positive weight",
        "models[5].split.variants[0].weight: Input should be greater than or equal to 0 (got -1)",
        "models[5].split.key_header: expected an HTTP header name, e.g. X-User-Id (got 'not a header')",
        "models[5].split.shadow.share: Input should be less than or equal to 1 (got 2)",
        "models[5].device: a split has no workers of its own; set device on the models of its variants",
    ]


def test_inferd_validate_names_each_problem_and_exits_2(tmp_path: Path) -> None:
    broken = BAD_SPLIT.split("  - name: zero")[0].replace("path: x.pt", "")
    missing_file = f"""
  - name: filed
    versions:
      - {{version: 1, handler: "{HANDLERS}:Echo"}}
      - {{version: 2, path: {tmp_path}/missing.pt}}
"""
    config = tmp_path / "broken.yaml"
    config.write_text(broken + missing_file)
    run = subprocess.run([sys.executable, "-m", "inferd", "validate", str(config)], capture_output=True, text=True)

    assert run.returncode == 2, run.stderr
    assert "models[3].split.variants[1].model: no model named 'plian'; did you mean 'plain'?" in run.stderr
    assert f"models[4].versions[1].path: {tmp_path}/missing.pt" in run.stderr
    assert "Traceback" not in run.stderr


def test_turns_give_each_variant_its_exact_share() -> None:
    turns = WeightedTurns([70, 30, 0])
    counts = Counter(turns.next() for _ in range(1000))
    assert counts == {0: 700, 1: 300}
    turns = WeightedTurns([70, 30])
    first_ten = [turns.next() for _ in range(10)]
    assert Counter(first_ten) == {0: 7, 1: 3}
    assert "0000" not in "".join(map(str, first_ten))  # spread out, not 7 in a row and then 3


@pytest.mark.parametrize("weights", [(70, 30), (1, 1, 1), (0, 5), (0.5, 0.25, 0.25)])
def test_sticky_choice_depends_on_the_key_and_weights_only(weights: tuple[float, ...]) -> None:
    chosen = [sticky_index(f"user-{n}".encode(), weights) for n in range(3000)]
    assert chosen == [sticky_index(f"user-{n}".encode(), weights) for n in range(3000)]
    shares = Counter(chosen)
    for index, weight in enumerate(weights):
        assert abs(shares[index] / 3000 - weight / sum(weights)) <= 0.03


def test_a_weight_change_moves_only_the_keys_in_the_range_that_changed_hands() -> None:
    keys = [f"user-{n}".encode() for n in range(3000)]
    before = [sticky_index(key, (90, 10)) for key in keys]
    after = [sticky_index(key, (80, 20)) for key in keys]
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(pair == (0, 1) for pair in moved)  # only from the shrinking variant to the growing one
    assert 0.05 <= len(moved) / len(keys) <= 0.15
