"""Who may call which route: optional API keys, and the rules of admin routes.

API keys (`server.auth.api_keys_env`/`api_keys_file`) guard every route but the health routes and
/metrics (unless `protect_health`/`protect_metrics`). /openapi.json is guarded like the routes it
describes: it names every model, its inputs and its routes. The status page's shell (`GET /`) is
open: it is a fixed file holding no data, and its script sends the key for /status.json, which
names models and their placement and is guarded like /models.

Admin routes (every path under /admin/) are never open to the network by default:
- with admin keys (`server.auth.admin_keys_env`/`admin_keys_file`), a request needs one of them,
  from any address (API keys do not open admin routes: a client that may infer may not reload);
- without, they answer only to loopback peers (127.0.0.0/8, ::1), after the API key if any;
- always, once its key (if any) is checked, the request must be one a web page cannot send
  unseen: a JSON content type or an `X-Inferd-Admin` header (either makes a browser ask first,
  and the server never agrees), no Origin of another site, and a Host the server answers to
  (loopback names and addresses, the address the connection arrived at, `server.host`,
  `server.admin_hosts`), which defeats DNS rebinding.
A key is presented as `Authorization: Bearer <key>` or `X-API-Key: <key>` and compared in
constant time with every configured key, so neither a match nor its position can be timed.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

from inferd.config import ServerConfig
from inferd.errors import ConfigError, Forbidden, Unauthorized
from inferd.key_names import name_keys
from inferd.protocols.routing import Route

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
STATUS_PAGE_PATH = "/"  # a browser cannot send a key when it opens a page: the page asks for one
ADMIN_HEADER = b"x-inferd-admin"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})

Scope = MutableMapping[str, Any]
Headers = Iterable[tuple[bytes, bytes]]


def load_keys(variable: str | None, file: Path | None, field: str, source: str) -> tuple[bytes, ...]:
    """The keys named by `<field>_env` and `<field>_file`; none configured gives ()."""
    return tuple(key for _, key in load_named_keys(variable, file, field, source))


def load_named_keys(variable: str | None, file: Path | None, field: str, source: str) -> tuple[tuple[str, bytes], ...]:
    """The same keys, each with its name (key_names.py)."""
    keys: list[str] = []
    if variable:
        value = os.environ.get(variable, "")
        if not value.strip():
            raise ConfigError(source, [f"server.auth.{field}_env: environment variable {variable} is not set or empty"])
        keys += value.replace(",", " ").split()
    if file:
        try:
            lines = file.read_text().splitlines()
        except OSError as error:
            raise ConfigError(source, [f"server.auth.{field}_file: cannot read {file}: {error.strerror}"]) from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if (variable or file) and not keys:
        raise ConfigError(source, [f"server.auth: no {field.replace('_', ' ')} found in the given variable or file"])
    return name_keys(keys, field, source)


def presented_key(headers: Headers) -> bytes:
    presented = b""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            presented = value[7:].strip()
        elif name == b"x-api-key":
            presented = value.strip()
    return presented


def matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    return key_index(presented, keys) is not None


def key_index(presented: bytes, keys: tuple[bytes, ...]) -> int | None:
    """The position of the key `presented` is, or None."""
    found = None
    for index, key in enumerate(keys):  # no early exit: every key is compared
        if hmac.compare_digest(presented, key):
            found = index
    return found


class Access:
    def __init__(
        self, server: ServerConfig, api_keys: tuple[bytes, ...], admin_keys: tuple[bytes, ...],
        api_key_names: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.api_keys = api_keys
        self.api_key_names = api_key_names or tuple(f"key-{n}" for n in range(1, len(api_keys) + 1))
        self.admin_keys = admin_keys
        auth = server.auth
        self.open_paths = set() if auth is not None and auth.protect_health else set(HEALTH_PATHS)
        self.open_paths.add(STATUS_PAGE_PATH)
        if auth is None or not auth.protect_metrics:
            self.open_paths.add("/metrics")
        self.admin_hosts = frozenset({*LOOPBACK_NAMES, *(h.lower() for h in server.admin_hosts)})
        if server.host not in _WILDCARD_HOSTS:
            self.admin_hosts |= {server.host.lower()}

    @classmethod
    def from_config(cls, server: ServerConfig, source: str) -> Access:
        auth = server.auth
        if auth is None:
            return cls(server, (), ())
        api_keys = load_named_keys(auth.api_keys_env, auth.api_keys_file, "api_keys", source)
        admin_keys = load_keys(auth.admin_keys_env, auth.admin_keys_file, "admin_keys", source)
        return cls(server, tuple(key for _, key in api_keys), admin_keys, tuple(name for name, _ in api_keys))

    @classmethod
    def open_to_all(cls, server: ServerConfig) -> Access:
        """No keys at all (the separate metrics port), admin rules as ever."""
        return cls(server, (), ())

    def check(self, route: Route, scope: Scope) -> str | None:
        """Raise Unauthorized or Forbidden unless this request may call `route`; answer the name of
        the API key it opened a model or service route with (None where it needed none)."""
        if route.admin:
            self._check_admin(scope)
        elif self.api_keys and route.path not in self.open_paths:
            name = self.key_name(scope["headers"])
            if name is None:
                raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
            return name
        return None

    def key_name(self, headers: Headers) -> str | None:
        """The name of the API key these headers (or gRPC metadata) present, or None."""
        index = key_index(presented_key(headers), self.api_keys)
        return None if index is None else self.api_key_names[index]

    def _require(self, keys: tuple[bytes, ...], scope: Scope, what: str) -> None:
        if not matches(presented_key(scope["headers"]), keys):
            raise Unauthorized(f"missing or wrong {what}: send 'Authorization: Bearer <key>'")

    def _check_admin(self, scope: Scope) -> None:
        if self.admin_keys:
            self._require(self.admin_keys, scope, "admin key")
        else:
            if self.api_keys:
                self._require(self.api_keys, scope, "API key")
            _require_loopback(scope.get("client"))
        _require_script_request(scope["headers"])
        self._require_own_host(scope)

    def _require_own_host(self, scope: Scope) -> None:
        host = _header(scope["headers"], b"host")
        if host is not None:
            name = host_name(host)
            arrived_at = (scope.get("server") or ("",))[0]
            if name not in self.admin_hosts and not is_loopback(name) and name != arrived_at:
                raise Forbidden(
                    f"admin requests must name this server in Host, not {host!r}: a loopback name or address, "
                    "server.host, or a name listed in server.admin_hosts"
                )
            origin = _header(scope["headers"], b"origin")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                raise Forbidden(f"admin requests from a web page of another origin ({origin!r}) are refused")


def _require_loopback(client: tuple[str, int] | None) -> None:
    if not is_loopback(client[0] if client else None):
        raise Forbidden(
            f"admin routes answer only on loopback, and this request came from {client[0] if client else '?'}; "
            "set server.auth.admin_keys_env or admin_keys_file to allow them from elsewhere with an admin key, "
            "or reload on the server's machine (`inferd reload`, or SIGHUP to the inferd process)"
        )


def _require_script_request(headers: Headers) -> None:
    """A JSON content type or a custom header: a page's form, link or image request has neither."""
    content_type = ""
    for name, value in headers:
        if name == ADMIN_HEADER:
            return
        if name == b"content-type":
            content_type = value.decode("latin-1").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Forbidden(
            "admin requests need 'Content-Type: application/json' or an 'X-Inferd-Admin: 1' header "
            "(so that no web page can send one)"
        )


def _header(headers: Headers, wanted: bytes) -> str | None:
    for name, value in headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


def host_name(host: str) -> str:
    """'[::1]:8080' -> '::1', 'Example.com:80' -> 'example.com'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() and ":" not in name else host


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback
