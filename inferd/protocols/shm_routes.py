"""The HTTP routes of the system shared-memory extension, as Triton serves them:

    GET  /v2/systemsharedmemory[/region/<name>]/status
    POST /v2/systemsharedmemory/region/<name>/register   {"key": "/shm-key", "offset": 0, "byte_size": N}
    POST /v2/systemsharedmemory[/region/<name>]/unregister

The regions are the daemon's (`Daemon.shared_memory`, inferd.protocols.shm), shared with gRPC.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from starlette.responses import Response

from inferd.daemon import Daemon
from inferd.errors import BadRequest
from inferd.protocols.http import Call, body_limits, json_response, read_json_document
from inferd.protocols.routing import Match, Resolver, Route

PREFIX = "/v2/systemsharedmemory"
_REGISTER_BODY_BYTES = 64 * 1024


def resolver(daemon: Daemon) -> Resolver:
    routes = table(daemon)

    def resolve(path: str) -> Match | None:
        rest = path.removeprefix(PREFIX).strip("/").split("/")
        if len(rest) == 1:
            route = routes.get(rest[0])
            return Match(route) if route is not None else None
        if len(rest) == 3 and rest[0] == "region" and rest[1]:
            route = routes.get(f"region/{rest[2]}")
            return Match(route, None, {"name": rest[1]}) if route is not None else None
        return None

    return resolve


def table(daemon: Daemon) -> dict[str, Route]:
    """The routes by what follows PREFIX ("region/" + the action for one region's)."""
    regions = daemon.shared_memory

    async def status(call: Call) -> Response:
        return json_response(regions.status(call.params.get("name")))

    async def unregister(call: Call) -> Response:
        regions.unregister(call.params.get("name"))
        return json_response({})

    async def register(call: Call) -> Response:
        limits = body_limits(daemon.config.server, "", 1, ())
        document = await read_json_document(call.request, limits, daemon.admission)
        key, offset, byte_size = _register_fields(document)
        regions.register(call.params["name"], key, offset, byte_size)
        return json_response({})

    return {
        "status": Route(f"{PREFIX}/status", {"GET": status}),
        "unregister": Route(f"{PREFIX}/unregister", {"POST": unregister}),
        "region/status": Route(f"{PREFIX}/region/{{name}}/status", {"GET": status}),
        "region/register": Route(f"{PREFIX}/region/{{name}}/register", {"POST": register}),
        "region/unregister": Route(f"{PREFIX}/region/{{name}}/unregister", {"POST": unregister}),
    }


def _register_fields(document: Any) -> tuple[str, int, int]:
    if not isinstance(document, dict):
        raise BadRequest('the body must be a JSON object: {"key": "/name", "offset": 0, "byte_size": N}')
    key, offset, byte_size = document.get("key"), document.get("offset", 0), document.get("byte_size")
    if not isinstance(key, str) or not _is_int(offset) or not _is_int(byte_size):
        raise BadRequest('give "key" (a string), "byte_size" and optionally "offset" (integers)')
    return key, offset, byte_size


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
