"""Triton's model repository extension over HTTP, on the model pool (inferd/model_pool.py):

    POST /v2/repository/index                    {"ready": false}   -> [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/<name>/load       {"parameters": {}}
    POST /v2/repository/models/<name>/unload     {"parameters": {"unload_dependents": false}}

The models it knows are the config's: a load starts a model's workers, an unload answers what the
model accepted and then ends them. A pipeline loads by loading its steps and holds no workers of
its own to unload. Admin routes (their paths are under routing.ADMIN_PREFIXES): loopback only
unless admin keys are set, and never from a web page. gRPC's RepositoryIndex,
RepositoryModelLoad and RepositoryModelUnload call `index`, `load` and `unload` here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from starlette.responses import Response

from inferd.daemon import Daemon, ServedModel
from inferd.errors import BadRequest, ModelNotFound, RequestError, StartupError
from inferd.protocols.http import BodyLimits, Call, json_response, parse_json, read_body
from inferd.protocols.routing import Match, Resolver, Route
from inferd.versions import public_names

PREFIX = "/v2/repository"
_BODY_BYTES = 64 * 1024
# Triton's words for a model's state in the index.
_TRITON_STATES = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING"}


class LoadFailed(RequestError):
    """The model's workers could not boot (its file, its handler, its warmup): retrying will not help."""

    status = 500


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str  # READY, LOADING, UNLOADING or UNAVAILABLE
    reason: str


def index(daemon: Daemon, ready_only: bool = False) -> list[IndexEntry]:
    entries = [_entry(daemon, served) for served in daemon.models.values()]
    return [entry for entry in entries if entry.state == "READY" or not ready_only]


def _entry(daemon: Daemon, served: ServedModel) -> IndexEntry:
    state = daemon.pool.state(served)
    name, version = served.public_name, served.version
    if state in _TRITON_STATES:
        return IndexEntry(name, version, _TRITON_STATES[state], "")
    if state == "unloaded":
        lazy = served.config.load == "lazy"
        return IndexEntry(
            name, version, "UNAVAILABLE", "unloaded (lazy: loads on its first request)" if lazy else "unloaded"
        )
    return IndexEntry(name, version, "UNAVAILABLE", served.workers.unavailable_reason or "no ready worker yet")


async def load(daemon: Daemon, name: str, parameters: Mapping[str, Any]) -> None:
    served = find(daemon, name)
    _refuse_overrides(parameters)
    members = _members(served)
    if members is not None:
        for member in members:
            await load(daemon, member, {})
        return
    try:
        await daemon.pool.load(served.name)
    except StartupError as error:
        raise LoadFailed(f"model {name!r} could not be loaded: {error}") from None


async def unload(daemon: Daemon, name: str) -> None:
    served = find(daemon, name)
    members = _members(served)
    if members is not None:
        kind = "a pipeline" if served.config.pipeline is not None else "a traffic split"
        raise BadRequest(f"model {name!r} is {kind}: it holds no workers of its own; unload its models {members}")
    await daemon.pool.unload(served.name)


def _members(served: ServedModel) -> list[str] | None:
    """The models a pipeline's steps or a split's variants name; None for a model with workers."""
    if served.config.pipeline is not None:
        return list(dict.fromkeys(step.model for step in served.config.pipeline))
    if served.config.split is not None:
        return list(dict.fromkeys(variant.model for variant in served.config.split.variants))
    return None


def find(daemon: Daemon, name: str) -> ServedModel:
    """The model `name` names: a served name, or a versioned model's default version."""
    served = daemon.models.get(name) or daemon.find(name)
    if served is None:
        raise ModelNotFound(
            f"no model named {name!r} in the config; models: {public_names(daemon.models)} (the repository "
            "API loads and unloads the config's models: add one to the config and reload)"
        )
    return served


def _refuse_overrides(parameters: Mapping[str, Any]) -> None:
    overrides = sorted(key for key in parameters if key == "config" or key.startswith("file:"))
    if overrides:
        raise BadRequest(
            f"a load request cannot carry a model's configuration or files ({overrides}): inferd loads "
            "the models of its config file; change the file and reload"
        )


# ---- HTTP -------------------------------------------------------------------------------------


def routes(daemon: Daemon) -> list[Route]:
    async def get_index(call: Call) -> Response:
        body = await _body(call, daemon)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise BadRequest(f"'ready' must be true or false, got {ready!r}")
        return json_response([asdict(entry) for entry in index(daemon, ready)])

    return [Route(f"{PREFIX}/index", {"POST": get_index})]


def model_routes(daemon: Daemon) -> dict[str, Route]:
    """The per-model routes by their last path part ("load", "unload"); the resolver serves them
    and /openapi.json lists them from here."""

    async def load_model(call: Call) -> Response:
        await load(daemon, call.params["name"], _parameters(await _body(call, daemon)))
        return json_response(asdict(_entry(daemon, find(daemon, call.params["name"]))))

    async def unload_model(call: Call) -> Response:
        _parameters(await _body(call, daemon))
        await unload(daemon, call.params["name"])
        return json_response(asdict(_entry(daemon, find(daemon, call.params["name"]))))

    return {
        "load": Route(f"{PREFIX}/models/{{name}}/load", {"POST": load_model}),
        "unload": Route(f"{PREFIX}/models/{{name}}/unload", {"POST": unload_model}),
    }


def resolver(daemon: Daemon) -> Resolver:
    by_action = model_routes(daemon)

    def resolve(path: str) -> Match | None:
        parts = path.split("/")
        if len(parts) != 6 or parts[:4] != ["", "v2", "repository", "models"] or not parts[4]:
            return None
        route = by_action.get(parts[5])
        return Match(route, daemon.models.get(parts[4]), {"name": parts[4]}) if route is not None else None

    return resolve


async def _body(call: Call, daemon: Daemon) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object (tritonclient sends one)."""
    limits = BodyLimits(_BODY_BYTES, daemon.config.server.body_timeout_s, "the repository API's limit")
    raw = await read_body(call.request, limits)
    document = parse_json(raw) if raw.strip() else {}
    if not isinstance(document, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(document).__name__}")
    return document


def _parameters(body: Mapping[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"'parameters' must be a JSON object, got {type(parameters).__name__}")
    dependents = parameters.get("unload_dependents", False)
    if not isinstance(dependents, bool):
        raise BadRequest(f"'parameters.unload_dependents' must be true or false, got {dependents!r}")
    return parameters
