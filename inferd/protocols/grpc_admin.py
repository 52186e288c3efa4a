"""Who may make gRPC's admin calls (the model repository's index, load and unload): the rules of
the HTTP admin routes (inferd.auth), as far as gRPC carries them.

With admin keys, a call needs one (metadata `authorization: Bearer <key>` or `x-api-key`), from
any address; without, it must come from a loopback peer, after the API key where API keys are
set. The HTTP rules against web pages (a JSON content type or a custom header, Origin, Host) have
nothing to guard here: no browser page can make a gRPC call (HTTP/2 with trailers) to this port.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from inferd.auth import Access, is_loopback, matches, presented_key
from inferd.errors import Forbidden, Unauthorized


def check_admin_call(access: Access, metadata: Iterable[tuple[bytes, bytes]], peer: str | None) -> None:
    """Raise Unauthorized or Forbidden unless this call may use an admin RPC."""
    presented = presented_key(metadata)
    if access.admin_keys:
        if not matches(presented, access.admin_keys):
            raise Unauthorized("missing or wrong admin key: send the metadata 'authorization: Bearer <admin key>'")
        return
    if access.api_keys and not matches(presented, access.api_keys):
        raise Unauthorized("missing or wrong API key: send the metadata 'authorization: Bearer <key>'")
    address = peer_address(peer)
    if not is_loopback(address):
        raise Forbidden(
            f"the repository calls answer only on loopback, and this call came from {address or peer or '?'}; "
            "set server.auth.admin_keys_env or admin_keys_file to allow them from elsewhere with an admin key"
        )


def peer_address(peer: str | None) -> str | None:
    """grpc's peer string ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000', URL-quoted or not) -> its address."""
    if not peer:
        return None
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if scheme == "ipv4":
        return rest.rsplit(":", 1)[0]
    return None  # a unix socket or an unknown transport: not a loopback address we can vouch for
