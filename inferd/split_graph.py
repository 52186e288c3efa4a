"""A traffic split's config problems: pure functions over the config tree, shared by config
validation (`inferd validate`, `serve`, reload) and nothing else.

A split names models of the same config (each a model, one version of a model, or a pipeline);
its weights are not all zero; a variant is never a split itself (weights would multiply out of
sight) nor a generative model (a split routes whole requests, not token streams); and a request
the split accepts fits every variant's max_batch_size. Each problem is named at its YAML path.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from inferd.pipeline_graph import WORKER_FIELDS
from inferd.versions import ONLY_VERSION

if TYPE_CHECKING:
    from inferd.config import ModelConfig, ShadowConfig, SplitConfig, SplitVariant


def split_entry_problems(entry: dict[Any, Any], where: str) -> list[str]:
    """A split entry's keys that only a model with workers (or a pipeline) takes."""
    problems = [
        f"{where}.{key}: a split has no workers of its own; set {key} on the models of its variants"
        for key in WORKER_FIELDS
        if key in entry
    ]
    return problems + [
        f"{where}.{key}: a split routes to other models; it cannot also be a {what}"
        for key, what in (("pipeline", "pipeline"), ("generation", "generative model"), ("versions", "versioned model"))
        if entry.get(key) is not None
    ]


def split_problems(entries: list[Any], models: dict[int, ModelConfig]) -> list[str]:
    """Every split's problems across entries: variants that do not exist or cannot be variants,
    weights that are all zero, a max_batch_size a variant cannot take."""
    named = {m.name: m for m in models.values()}
    written = {e.get("name") for e in entries if isinstance(e, dict)}  # entries that failed are named elsewhere
    problems: list[str] = []
    for index, model in models.items():
        if model.split is not None:
            problems += _problems_of(model, model.split, f"models[{index}].split", named, written)
    return problems


def _problems_of(
    model: ModelConfig, split: SplitConfig, where: str, named: dict[str, ModelConfig], written: set[Any]
) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, variant in enumerate(split.variants):
        at = f"{where}.variants[{index}]"
        problems += _target_problems(variant, at, named, written, model)
        if variant.label in seen:
            problems.append(f"{at}: {variant.label!r} is already variants[{seen[variant.label]}]; give it one weight")
        seen.setdefault(variant.label, index)
    if not split.variants:
        problems.append(f"{where}.variants: list at least one variant, e.g. [{{model: a, weight: 90}}, ...]")
    elif not any(variant.weight > 0 for variant in split.variants):
        problems.append(f"{where}.variants: every weight is 0; give at least one variant a positive weight")
    if split.shadow is not None:
        problems += _target_problems(split.shadow, f"{where}.shadow", named, written, model)
    return problems


def _target_problems(
    target: SplitVariant | ShadowConfig,
    where: str,
    named: dict[str, ModelConfig],
    written: set[Any],
    split: ModelConfig,
) -> list[str]:
    model = named.get(target.model)
    if model is None:
        return (
            [] if target.model in written else [f"{where}.model: no model named {target.model!r}{_hint(target, named)}"]
        )
    if model.split is not None:
        return [f"{where}.model: {target.model!r} is a split itself; list its variants here instead"]
    if model.generation is not None:
        return [
            f"{where}.model: {target.model!r} is a generative model; a split takes models that answer whole requests"
        ]
    versions = [str(v.version) for v in model.versions or ()] or [ONLY_VERSION]
    if target.version is not None and target.version not in versions:
        return [f"{where}.version: model {target.model!r} has no version {target.version!r} (it has {versions})"]
    return _batch_problems(target, where, model, split)


def _batch_problems(
    target: SplitVariant | ShadowConfig, where: str, model: ModelConfig, split: ModelConfig
) -> list[str]:
    chosen = [v for v in model.versions or () if target.version in (None, v.version)] or [model]
    smallest = min(chosen, key=lambda m: m.max_batch_size)
    if model.pipeline is None and smallest.max_batch_size < split.max_batch_size:
        return [
            f"{where}: {target.label!r} takes at most {smallest.max_batch_size} items per request (max_batch_size), "
            f"fewer than this split's max_batch_size {split.max_batch_size}; lower the split's"
        ]
    return []


def _hint(target: SplitVariant | ShadowConfig, named: dict[str, ModelConfig]) -> str:
    close = difflib.get_close_matches(target.model, list(named), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(named)}"
