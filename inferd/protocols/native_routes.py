"""The native route: POST a model's own path (`route`, or /models/<name>/predict) with inferd's JSON
(inferd.protocols.native is its codec), or with a raw body (an image, say) of any other Content-Type. Paths are looked up in the daemon per request, so a reload
that adds or removes a model changes them at once."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response

from inferd.daemon import Daemon
from inferd.errors import ModelNotFound, NotFound, RequestError
from inferd.priority import header_priority
from inferd.protocols import native, predict_stream
from inferd.protocols.disconnect import unless_client_leaves
from inferd.protocols.http import Call, Endpoint, json_response
from inferd.protocols.routing import Match, Resolver, Route


def resolver(daemon: Daemon) -> Resolver:
    route = Route("<a model's route>", {"POST": _predict(daemon)}, inference=True)

    def resolve(path: str) -> Match | None:
        model = daemon.route(path)
        return Match(route, model) if model is not None else None

    return resolve


def _predict(daemon: Daemon) -> Endpoint:
    async def predict(call: Call) -> Response:
        model = call.model
        assert model is not None  # the resolver matched it
        priority = header_priority(call.request.headers, model.config)
        with daemon.admission.hold(model.name, model.config.request_bytes_fraction) as held:
            if native.is_raw(call.request.headers.get("content-type")):
                decoded = await native.read_raw(call.request, daemon, model, held)
            else:
                decoded = await native.read_request(call.request, daemon, model, held)
            if decoded.stream:
                return await predict_stream.answer(call, model, decoded)
            infer = model.batcher.infer(decoded.payload, decoded.items, decoded.key, priority)
            result = await unless_client_leaves(call.request.receive, infer, call.request.scope)
            return json_response(native.encode(result, model.outputs, decoded))

    return predict


def not_found(daemon: Daemon) -> Callable[[str], RequestError]:
    """The 404 for a path no route matched, naming the models where it looks like a model's route."""

    def error(path: str) -> RequestError:
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "models" and parts[2] == "predict":
            return ModelNotFound(f"no model named {parts[1]!r}; models: {sorted(daemon.models)}")
        return NotFound(f"no route {path}")

    return error
