"""ACK what a client sent at once, instead of after the kernel's delayed-ACK timer.

A client that writes a request without TCP_NODELAY (tritonclient.http's geventhttpclient does) holds
the last, partial segment of a body back under Nagle's rule until every earlier byte is
acknowledged. Linux delays ACKs on a connection it judges interactive, which a keep-alive
connection of requests and answers is, by up to its 40 ms floor: the two wait on each other, and a
4 MiB body took 50 ms instead of 5. Setting TCP_QUICKACK after each read sends the pending ACK now
(the option is not sticky: the kernel may go back to delaying, so it is set on every read). One
setsockopt per read; where the option does not exist (not Linux) or the socket refuses it, nothing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def quick_ack(transport: asyncio.BaseTransport) -> Callable[[], None] | None:
    """A call that acknowledges what `transport`'s socket has received so far, or None."""
    sock = transport.get_extra_info("socket")
    if _TCP_QUICKACK is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    option = _TCP_QUICKACK

    def ack_now() -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
        except OSError:  # the connection is closing: nothing to acknowledge
            pass

    return ack_now
