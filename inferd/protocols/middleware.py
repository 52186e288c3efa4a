"""ASGI middleware named in the config, each built once as `Class(app, **args)` (Starlette's
convention): `server.middleware` around every HTTP request, a model's own `middleware` around the
requests whose path names that model (its native route, its v2 routes, its generate route). In
each list the first is the outermost. Lifespan events never pass through them. gRPC has no ASGI
layer.

The OpenAI routes name their model in the body, so its chain can only run once the body is read:
such a route answers `ThroughModelMiddleware` for a model that has one, and the front sends the
same request, its body replayed, through that chain, inside which the route serves it
(`passed_model_middleware` tells it so). A model's middleware thus guards it on every HTTP route.

Every chain is built before it serves: at start-up (a problem stops `serve`) and for a reload's new
config before the reload applies (a problem rejects it). A middleware that cannot be imported, is
not callable or whose constructor raises is a problem at its YAML path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse, Response

from inferd.config import Config, MiddlewareSpec, ModelConfig
from inferd.errors import ConfigError, StartupError
from inferd.importer import import_named, one_line

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


@dataclass
class _ChainRun:
    """One request's way through a model's chain, as the front runs it."""

    model: str
    replayed: bool  # a route whose body names the model sent it here (ThroughModelMiddleware)
    reached: bool = False  # the chain passed it on to inferd's own handling


_RUN: ContextVar[_ChainRun | None] = ContextVar("inferd_model_middleware_run", default=None)


def reached_inferd() -> None:
    """Called by the app a model's chain wraps: the request passed every middleware of it."""
    run = _RUN.get()
    if run is not None:
        run.reached = True


class ThroughModelMiddleware(Response):
    """A route's answer for a body that names `model`, whose middleware the request has not passed:
    the front replays `body` through the model's chain (nothing of it is sent as is)."""

    def __init__(self, model: ModelConfig, body: bytes) -> None:
        super().__init__()
        self.model = model
        self.body = body


def through_model_middleware(model: ModelConfig, body: bytes) -> ThroughModelMiddleware | None:
    """What a route whose body names `model` answers before serving it: None where it may serve it
    now (the model has no middleware, or the request is inside its chain already)."""
    run = _RUN.get()
    if not model.middleware or (run is not None and run.replayed and run.model == model.name):
        return None
    return ThroughModelMiddleware(model, body)


def passed_model_middleware() -> bool:
    """Whether the request being served is inside a model's chain that a route sent it through."""
    run = _RUN.get()
    return run is not None and run.replayed


class MiddlewareProblem(Exception):
    """Middleware entries that cannot be built, each worded at its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_factory(spec: MiddlewareSpec, base_dir: Path, where: str) -> Callable[..., Any]:
    """What `class` names: a class or function that takes the app (and `args`) and returns an app."""
    try:
        module, module_name, attribute = import_named(spec.factory, base_dir, "middleware")
    except StartupError as error:
        raise MiddlewareProblem([f"{where}.class: {error}"]) from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise MiddlewareProblem([f"{where}.class: middleware module {module_name!r} has no attribute {attribute!r}"])
    if not callable(factory):
        kind = type(factory).__name__
        raise MiddlewareProblem([f"{where}.class: {spec.factory} is a {kind}, not a class that takes the app"])
    return factory


def wrap(app: ASGIApp, specs: Sequence[MiddlewareSpec], base_dir: Path, where: str) -> ASGIApp:
    """`app` inside each middleware of `specs`, the first outermost; MiddlewareProblem naming
    every entry that cannot be built (the rest are still built, so none hides another)."""
    problems: list[str] = []
    for index in reversed(range(len(specs))):
        try:
            app = _built(app, specs[index], base_dir, f"{where}[{index}]")
        except MiddlewareProblem as problem:
            problems = problem.problems + problems
    if problems:
        raise MiddlewareProblem(problems)
    return app


def _built(app: ASGIApp, spec: MiddlewareSpec, base_dir: Path, where: str) -> ASGIApp:
    factory = load_factory(spec, base_dir, where)
    try:
        return factory(app, **spec.args)  # type: ignore[no-any-return]
    except Exception as error:  # the user's constructor: wrong arguments, a failed check
        raise MiddlewareProblem([f"{where}.args: {spec.factory}(app, **args) raised {one_line(error)}"]) from None


def base_dir_of(config: Config) -> Path:
    return Path(config.source).resolve().parent


def build_all(app: ASGIApp, config: Config, models: ModelMiddleware) -> ASGIApp:
    """`app` inside the server-wide middleware, with every model's chain prepared in `models`;
    ConfigError naming every entry that cannot be built."""
    problems = []
    try:
        app = wrap(app, config.server.middleware, base_dir_of(config), "server.middleware")
    except MiddlewareProblem as problem:
        problems += problem.problems
    try:
        models.prepare(config)
    except ConfigError as error:
        problems += error.problems
    if problems:
        raise ConfigError(config.source, problems)
    return app


class ModelMiddleware:
    """Each model's chain around `inner` (the front's handling of a matched request), by model."""

    def __init__(self, inner: ASGIApp) -> None:
        self._inner = inner
        self._chains: dict[str, list[tuple[tuple[MiddlewareSpec, ...], ASGIApp]]] = {}

    def prepare(self, config: Config) -> None:
        """Build every chain `config` names that is not built yet; ConfigError naming each problem."""
        built, problems = {}, []
        for index, model in enumerate(config.models):
            if model.middleware and self._built(model) is None:
                try:
                    built[model.name] = wrap(
                        self._inner, model.middleware, base_dir_of(config), f"models[{index}].middleware"
                    )
                except MiddlewareProblem as problem:
                    problems += problem.problems
        if problems:
            raise ConfigError(config.source, problems)
        for model in config.models:
            if model.name in built:  # the chain before it stays, for a model whose reload fails
                self._chains[model.name] = [
                    (model.middleware, built[model.name]),
                    *self._chains.get(model.name, [])[:1],
                ]

    async def replay(self, detour: ThroughModelMiddleware, scope: Scope, receive: Any, send: Any) -> int | None:
        """The request again, through `detour.model`'s chain (as `run`), its body (already read)
        given anew; what comes after it (a disconnect) from the client as before."""
        replayed = False

        async def receive_again() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": detour.body, "more_body": False}

        return await self.run(detour.model, scope, receive_again, send, replayed=True)

    async def run(
        self, model: ModelConfig, scope: Scope, receive: Any, send: Any, replayed: bool = False
    ) -> int | None:
        """The request through `model`'s chain; the status of the answer a middleware gave itself
        (None where the request reached inferd's own handling, which counts it)."""
        status = None

        async def watched(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        run = _ChainRun(model.name, replayed)
        token = _RUN.set(run)
        try:
            await self.chain_for(model)(scope, receive, watched)
        finally:
            _RUN.reset(token)
        return None if run.reached else status

    def chain_for(self, model: ModelConfig) -> ASGIApp:
        chain = self._built(model)
        if chain is None:  # not prepared: a config applied without `prepare`, a bug of ours
            log.error("model %r: its middleware was never built; answering 503", model.name)
            return _unavailable(model.name)
        return chain

    def _built(self, model: ModelConfig) -> ASGIApp | None:
        return next((app for specs, app in self._chains.get(model.name, []) if specs == model.middleware), None)


def _unavailable(model: str) -> ASGIApp:
    return JSONResponse({"error": f"model {model!r}: its middleware is not built; see the server log"}, 503)


def middleware_problems(
    server: Sequence[MiddlewareSpec], models: Sequence[tuple[int, ModelConfig]], base_dir: Path
) -> list[str]:
    """Each middleware entry that cannot be built, for `inferd validate` (which runs this in a
    child process: it imports and constructs the user's classes)."""
    problems = _problems_of(server, base_dir, "server.middleware")
    for index, model in models:
        problems += _problems_of(model.middleware, base_dir, f"models[{index}].middleware")
    return problems


def _problems_of(specs: Sequence[MiddlewareSpec], base_dir: Path, where: str) -> list[str]:
    try:
        wrap(_answer_nothing, specs, base_dir, where)
    except MiddlewareProblem as problem:
        return problem.problems
    return []


async def _answer_nothing(scope: Scope, receive: Any, send: Any) -> None:
    """The app a middleware wraps while it is only checked."""
