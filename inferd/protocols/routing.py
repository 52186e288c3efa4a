"""Which route a path names, and which endpoint its method gets: one table for every route.

Rules, the same for every route:
- a known path with a method it does not take answers 405 with `Allow` (TRACE, OPTIONS and any
  undeclared method included); HEAD is answered by GET's endpoint where GET is allowed;
- paths under /v2 match with or without one trailing slash (the Open Inference Protocol document
  writes `/v2/`, clients write `/v2`);
- a route is an admin route if and only if its path is under /admin/ or /v2/repository/ (Triton's
  model repository extension: loading and unloading models) (`Route.admin`): the access rules
  for admin routes key on that, so no admin route can be declared without them;
- matching reads `scope["path"]` only, the same value access control reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inferd.errors import MethodNotAllowed, RequestError
from inferd.protocols.http import Endpoint, ErrorBody

if TYPE_CHECKING:
    from inferd.daemon import ServedModel

ADMIN_PREFIXES = ("/admin/", "/v2/repository/")
_SLASH_TOLERANT = "/v2"


@dataclass(frozen=True)
class Route:
    path: str  # the path, or its pattern (e.g. /v2/models/{name}/infer), as messages name it
    methods: Mapping[str, Endpoint]
    inference: bool = False  # answers count in the model's request metrics
    error_body: ErrorBody | None = None  # its errors' JSON, where not inferd's {"error": str, ...}
    allow: str = field(init=False)

    def __post_init__(self) -> None:
        declared = set(self.methods) | ({"HEAD"} if "GET" in self.methods else set())
        object.__setattr__(self, "allow", ", ".join(sorted(declared)))

    @property
    def admin(self) -> bool:
        return self.path.startswith(ADMIN_PREFIXES)

    def endpoint(self, method: str, path: str) -> Endpoint:
        endpoint = self.methods.get(method) or (self.methods.get("GET") if method == "HEAD" else None)
        if endpoint is None:
            raise MethodNotAllowed(f"{path} takes {self.allow}, not {method}", headers={"Allow": self.allow})
        return endpoint


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    model: ServedModel | None = None
    params: Mapping[str, str] = field(default_factory=dict)


Resolver = Callable[[str], Match | None]  # a family of paths decided by code (a model's route)


class Router:
    def __init__(
        self, routes: Iterable[Route], resolvers: Iterable[Resolver], not_found: Callable[[str], RequestError]
    ):
        self._fixed = {route.path: Match(route) for route in routes}
        self._resolvers = tuple(resolvers)
        self.not_found = not_found  # the 404 for a path nothing matched, saying what exists

    def match(self, path: str) -> Match | None:
        if path.endswith("/") and path.startswith(_SLASH_TOLERANT) and len(path) > len(_SLASH_TOLERANT):
            path = path[:-1]
        for resolve in self._resolvers:  # first: the hot inference routes
            found = resolve(path)
            if found is not None:
                return found
        return self._fixed.get(path)
