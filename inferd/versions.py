"""Versions of a model: how a YAML entry with `versions:` becomes one served model per version,
and which served model a name and version reach.

A versioned entry gives no file or handler of its own; each entry of its `versions` gives one and
inherits every other key of the entry (device, batching, inputs, ...), which it may override. Each
version is served as a model of its own, `<name>@<version>` (its own workers, queue, batcher and
series: the `model` label of every series is that served name, so existing queries and the
dashboard see each version as a row of its own, and `inferd_model_version_info` maps it back to
its name and version). `@` is not allowed in a model's name, so a served name never clashes with
one. The plain routes reach the default version (`default_version`, else the highest); a model
without versions answers as its one version, "1".
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferd.config import ModelConfig

SEPARATOR = "@"
ONLY_VERSION = "1"  # the version of a model that lists none, as KServe v2 and Triton name it
# Keys of a versioned entry that its versions do not inherit (they name the entry as a whole, or
# are each version's own).
NOT_INHERITED = ("name", "route", "versions", "default_version", "version", "split", "pipeline", "path", "handler")
_NOT_PER_VERSION = ("name", "route", "versions", "default_version", "split", "pipeline")

Rules = Callable[[dict[Any, Any], str], list[str]]
Check = Callable[[list[tuple[int, "ModelConfig"]]], list[str]]


def served_name(model: str, version: str) -> str:
    return f"{model}{SEPARATOR}{version}"


def public_name(served: str) -> str:
    """The model's name as the config writes it: 'tiny@2' -> 'tiny'."""
    return served.split(SEPARATOR, 1)[0]


def version_route(model: str, version: str) -> str:
    """The native route of one version."""
    return f"/models/{model}/versions/{version}/predict"


def version_order(version: str) -> tuple[int, int, str]:
    """Numbers by value, and before other names: '10' is higher than '9'."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def with_inherited_versions(data: Any) -> Any:
    """Each entry of `versions` with the keys it inherits from its model's entry (pydantic's
    'before' validator of ModelConfig: the merged entries are then validated like any model)."""
    if not isinstance(data, dict) or not isinstance(data.get("versions"), list):
        return data
    base = {key: value for key, value in data.items() if key not in NOT_INHERITED}
    merged = [
        {**base, **entry, "name": data.get("name")} if isinstance(entry, dict) else entry for entry in data["versions"]
    ]
    return {**data, "versions": merged}


def inherited_error(entry: Any, location: tuple[int | str, ...]) -> bool:
    """Whether a validation error inside `versions[i]` is about a key the version did not write
    itself: the model entry's own error already names that key where it is written."""
    if len(location) < 3 or location[0] != "versions" or not isinstance(location[1], int):
        return False
    versions = entry.get("versions") if isinstance(entry, dict) else None
    if not isinstance(versions, list) or location[1] >= len(versions) or not isinstance(versions[location[1]], dict):
        return False
    return location[2] not in versions[location[1]]


def version_entry_problems(entry: dict[Any, Any], where: str, rules: Rules) -> list[str]:
    """A versioned entry's rules: no file of its own, versions named once each, a known default,
    and each version's own rules (exactly one of path or handler, ...) on what it inherits."""
    versions = entry["versions"]
    if not isinstance(versions, list) or not versions:
        return [f"{where}.versions: list at least one version, e.g. [{{version: 1, path: model_v1.pt}}]"]
    problems = [
        f"{where}.{key}: a model with versions takes its {key} in each version, not in the model's entry"
        for key in ("path", "handler", "pipeline", "split")
        if entry.get(key) is not None
    ]
    base = {key: value for key, value in entry.items() if key not in NOT_INHERITED}
    seen: dict[str, int] = {}
    for index, version in enumerate(versions):
        if isinstance(version, dict):
            problems += _one_version_problems(version, f"{where}.versions[{index}]", seen, index)
            own = {key: value for key, value in version.items() if key not in (*_NOT_PER_VERSION, "version")}
            problems += rules({**base, **own}, f"{where}.versions[{index}]")
    default = entry.get("default_version")
    if default is not None and str(default) not in seen:
        problems.append(f"{where}.default_version: {str(default)!r} is not one of the versions {sorted(seen)}")
    return problems


def _one_version_problems(version: dict[Any, Any], where: str, seen: dict[str, int], index: int) -> list[str]:
    problems = [
        f"{where}.{key}: set on the model's entry, not per version" for key in _NOT_PER_VERSION if key in version
    ]
    if version.get("version") is None:
        return [*problems, f"{where}.version: required but missing; name the version, e.g. version: 2"]
    name = str(version["version"])
    if name in seen:
        problems.append(f"{where}.version: {name!r} is already the version of versions[{seen[name]}]; choose another")
    seen.setdefault(name, index)
    return problems


def plain_entry_problems(entry: dict[Any, Any], where: str) -> list[str]:
    """Version keys on an entry without versions."""
    return [
        f"{where}.{key}: goes with 'versions' (this model lists none)"
        for key in ("version", "default_version")
        if entry.get(key) is not None
    ]


def served_models(models: Iterable[ModelConfig]) -> list[ModelConfig]:
    """Every model as served: a versioned model as one model per version."""
    served: list[ModelConfig] = []
    for model in models:
        served += [as_served(model, version) for version in model.versions or ()] or [model]
    return served


def as_served(model: ModelConfig, version: ModelConfig) -> ModelConfig:
    assert version.version is not None
    update = {"name": served_name(model.name, version.version), "route": version_route(model.name, version.version)}
    return version.model_copy(update=update)


def default_of(model: ModelConfig) -> str:
    assert model.versions
    return model.default_version or max((str(v.version) for v in model.versions), key=version_order)


@dataclass(frozen=True)
class VersionTable:
    """Which served model a name (and version) reach: read per request, replaced by a reload."""

    versions: Mapping[str, tuple[str, ...]]  # a versioned model's name -> its versions, as listed
    defaults: Mapping[str, str]  # a versioned model's name -> its default version
    routes: Mapping[str, str]  # a versioned model's own native route -> its default's served name

    @classmethod
    def of(cls, models: Iterable[ModelConfig]) -> VersionTable:
        versioned = [model for model in models if model.versions]
        return cls(
            {m.name: tuple(str(v.version) for v in m.versions or ()) for m in versioned},
            {m.name: default_of(m) for m in versioned},
            {m.url_path: served_name(m.name, default_of(m)) for m in versioned},
        )

    def served(self, name: str, version: str | None = None) -> str | None:
        """The served name `name` at `version` (None or "": the default) reaches, if any;
        'tiny@2' names version 2 of tiny, for fronts that take a name only (OpenAI's `model`)."""
        if SEPARATOR in name and not version:
            name, version = name.split(SEPARATOR, 1)
        listed = self.versions.get(name)
        if listed is None:  # a model without versions is its version "1"
            return name if version in (None, "", ONLY_VERSION) and SEPARATOR not in name else None
        if not version:
            return served_name(name, self.defaults[name])
        return served_name(name, version) if version in listed else None

    def within(self, served: Collection[str], previous: VersionTable) -> VersionTable:
        """This table, where a default that is not served (its workers failed to start on a
        reload) stays the previous default, or else the highest version served."""
        defaults = dict(self.defaults)
        for name, default in self.defaults.items():
            if served_name(name, default) not in served:
                up = [v for v in self.versions[name] if served_name(name, v) in served]
                kept = previous.defaults.get(name)
                fallback = kept if kept in up else max(up, key=version_order) if up else default
                defaults[name] = fallback
        routes = {
            path: served_name(public_name(target), defaults[public_name(target)])
            for path, target in self.routes.items()
        }
        return VersionTable(self.versions, defaults, routes)

    def versions_of(self, name: str) -> list[str]:
        return list(self.versions.get(name, (ONLY_VERSION,)))

    def default(self, name: str) -> str:
        return self.defaults.get(name, ONLY_VERSION)


def at_versions(check: Check, models: Iterable[tuple[int, ModelConfig]]) -> list[str]:
    """`check`'s problems for each model (by YAML index); a versioned model is checked version by
    version, each problem named at the version's YAML path."""
    problems: list[str] = []
    for index, model in models:
        where = f"models[{index}]"
        if not model.versions:
            problems += check([(index, model)])
        for number, version in enumerate(model.versions or ()):
            found = check([(index, version)])
            problems += [problem.replace(where, f"{where}.versions[{number}]", 1) for problem in found]
    return problems


def public_names(served: Iterable[str]) -> list[str]:
    """The models' names as the config writes them, each once."""
    return sorted({public_name(name) for name in served})
