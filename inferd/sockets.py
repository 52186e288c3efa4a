"""The listening sockets, bound before anything else starts, and the process's open-files limit.

Binding first means a port that is taken stops `inferd serve` before a single worker is spawned or a
model loaded, with a message naming the port. The sockets are then handed to uvicorn.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from dataclasses import dataclass

from inferd.errors import ListenError

log = logging.getLogger(__name__)

# File descriptors kept for everything that is not a client connection: worker channels, model files,
# the listening sockets, logs.
RESERVED_FDS = 256


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    config_key: str  # where the port is set, for messages: "server.port"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listen_all(addresses: list[Address], backlog: int) -> list[socket.socket]:
    """One listening socket per address, or ListenError (and none left open)."""
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            sockets.append(listen(address, backlog))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen(address: Address, backlog: int) -> socket.socket:
    """A socket bound and listening at `address` (as uvicorn's own: IPv6 for a host with ':')."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart rebinds past TIME_WAIT
        sock.bind((address.host, address.port))
        sock.listen(backlog)  # now, not when uvicorn starts: a bound socket alone does not hold the port
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {address} ({address.config_key}): {_reason(error, address)}") from None
    port = sock.getsockname()[1]
    log.info("listening on http://%s (%s)", Address(address.host, port, address.config_key), address.config_key)
    return sock


def _reason(error: OSError, address: Address) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {address.port} is already in use; stop the process that holds it or choose another port"
    if error.errno == errno.EACCES:
        return f"not permitted to use port {address.port} (ports below 1024 need privileges); choose another port"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{address.host} is not an address of this machine; use one it has, or 0.0.0.0 for all"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host {address.host!r}"
    return error.strerror or str(error)


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection holds a descriptor); returns
    the soft limit in effect, and warns when it leaves too few descriptors for `max_connections`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open-files limit raised from %d to %d", soft, hard)
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, error)
    if soft != resource.RLIM_INFINITY and max_connections > soft - RESERVED_FDS:
        log.warning(
            "server.max_connections is %d but the open-files limit is %d: connections past about %d cannot be "
            "accepted; raise the hard limit (ulimit -Hn) or lower server.max_connections",
            max_connections,
            soft,
            max(soft - RESERVED_FDS, 0),
        )
    return soft
