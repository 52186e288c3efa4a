"""The HTTP connection layer: uvicorn's httptools protocol, with limits on what one client may hold.

httptools buffers a request's head (request line and headers) without limit, joining a long header
by repeated concatenation (quadratic in its length), and uvicorn sets no deadline for receiving it.
`LimitedHttpToolsProtocol` adds, per connection:

- a cap on each request's head, `max_header_bytes`: the parser is never fed more of an unfinished
  head than that; past it the client gets 431 and the connection closes. Bytes are counted per read,
  so a head that begins in the same read as the previous request's end can pass the cap by at most
  that one read.
- a deadline for the head, `header_timeout_s`: counted from the connection's opening for its first
  request (so a connection that never sends is closed too) and from the first byte of each later one;
  past it the client gets 408 and the connection closes (quietly if it sent nothing).
- a cap on open connections per listener, `max_connections`: past it a new connection gets 503 at
  once and is closed before anything of it is read. uvicorn's `limit_concurrency` does not fit: it
  counts running tasks with connections and answers only once a request's headers are in, so a slow
  client past the cap would still hold a descriptor and a parser.

Each read acknowledges what came at once (inferd.quick_ack: a client under Nagle's rule would
otherwise wait out the kernel's delayed ACK before sending a body's last bytes).

Idle keep-alive between requests is uvicorn's own `timeout_keep_alive`. After a 4xx it writes itself,
the protocol sends FIN and reads a little more before closing, so a client still sending gets the
answer rather than a reset. Counts of open and closed connections live on the `Listener` that the
metrics read at scrape time.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import http
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from inferd.protocols.disconnect import CLIENT_WATCH, ClientWatch
from inferd.quick_ack import quick_ack

log = logging.getLogger(__name__)

# After answering a 4xx of its own: read and drop at most this much, for at most this long, so the
# close does not reset a connection whose client is still sending (its unread bytes would).
LINGER_BYTES = 1024 * 1024
LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_connections: int


class Listener:
    """What the connections of one listening socket share: their limits, and counts for the metrics."""

    def __init__(self, name: str, limits: ConnectionLimits) -> None:
        self.name = name
        self.limits = limits
        self.open_connections = 0
        self.closed: collections.Counter[str] = collections.Counter()  # by inferd, by reason
        self._refusing = False

    def protocol(self) -> Callable[..., asyncio.Protocol]:
        """The protocol factory for `uvicorn.Config(http=...)`."""
        return functools.partial(LimitedHttpToolsProtocol, listener=self)

    def admit(self) -> bool:
        if self.open_connections < self.limits.max_connections:
            self.open_connections += 1
            return True
        if not self._refusing:  # one line per episode, not one per refused connection
            log.warning("%s: %d connections open (server.max_connections): refusing new ones with 503",
                        self.name, self.open_connections)  # fmt: skip
            self._refusing = True
        return False

    def release(self) -> None:
        self.open_connections -= 1
        if self._refusing:
            log.info("%s: below server.max_connections again; accepting connections", self.name)
            self._refusing = False


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        listener: Listener,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.listener = listener
        self.limits = listener.limits
        self.admitted = False
        self.in_head = True  # until the current request's headers are complete
        self.head_bytes = 0
        self.answered = False  # inferd answered this connection itself and is closing it
        self.linger_bytes = LINGER_BYTES
        self.deadline: asyncio.TimerHandle | None = None  # of the head, or of the linger
        self.ack_now: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.ack_now = quick_ack(transport)
        if not self.listener.admit():
            message = f"{self.limits.max_connections} connections are open (server.max_connections); retry shortly"
            self._answer_and_close(503, message, "over_limit", {"retry-after": "1"}, linger=False)
            return
        self.admitted = True
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            watch = self.cycle.scope.get(CLIENT_WATCH)
            if isinstance(watch, ClientWatch):
                watch.client_left()
        if self.admitted:
            self.admitted = False
            self.listener.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.ack_now is not None:
            self.ack_now()
        if self.answered:
            self._drop(len(data))
            return
        while data and self.in_head:
            self._arm_head_deadline()
            room = self.limits.max_header_bytes - self.head_bytes
            head, data = data[:room], data[room:]
            self.head_bytes += len(head)
            super().data_received(head)
            if self.answered or self.transport.is_closing():
                return
            if self.in_head and self.head_bytes >= self.limits.max_header_bytes:
                self._head_too_large()
                return
        if data:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_deadline()  # a pipelined request that began inside a read

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self._cancel_deadline()
        self.scope[CLIENT_WATCH] = ClientWatch(self.flow.resume_reading)  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True

    def send_400_response(self, msg: str) -> None:
        """Bad framing (uvicorn has logged its one line): a JSON 400, like every other error."""
        self._answer_and_close(400, "malformed HTTP request: check its request line, headers and framing", "malformed")

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.listener.closed["idle"] += 1
        super().timeout_keep_alive_handler()

    def _unsupported_upgrade_warning(self) -> None:
        # inferd serves no WebSocket: an Upgrade header is ignored and the request answered as plain
        # HTTP, with one debug line instead of uvicorn's two warnings about WebSocket libraries.
        log.debug("%s: ignored an Upgrade header", self._peer())

    def _arm_head_deadline(self) -> None:
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _head_timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a slow head pipelined behind a running request: close after it
            return
        if self.head_bytes == 0:
            log.debug("%s: closed: no request within %g s", self._peer(), self.limits.header_timeout_s)
            self.listener.closed["idle"] += 1
            self.transport.close()
            return
        log.info("%s: closed: request headers incomplete after %g s (server.header_timeout_s)",
                 self._peer(), self.limits.header_timeout_s)  # fmt: skip
        message = f"request headers not complete within {self.limits.header_timeout_s:g} s (server.header_timeout_s)"
        self._answer_and_close(408, message, "header_timeout")

    def _head_too_large(self) -> None:
        cap = self.limits.max_header_bytes
        log.info("%s: closed: request headers over %d bytes (server.max_header_bytes)", self._peer(), cap)
        message = (
            f"request line and headers exceed {cap} bytes (server.max_header_bytes); send fewer or shorter headers"
        )
        self._answer_and_close(431, message, "header_too_large")

    def _answer_and_close(
        self, status: int, message: str, reason: str, headers: dict[str, str] | None = None, linger: bool = True
    ) -> None:
        self.answered = True
        self._cancel_deadline()
        self.listener.closed[reason] += 1
        if self._may_answer():
            self.transport.write(error_response(status, message, headers or {}))
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then FIN; the client's close or the deadline ends it
            self.deadline = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _may_answer(self) -> bool:
        """True unless a response is already under way; a request still running (its body turned out
        malformed, say) is told its client is gone, so that its own answer is never written."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True
        if cycle.response_started:
            return False
        cycle.disconnected = True
        cycle.message_event.set()
        return True

    def _drop(self, size_bytes: int) -> None:
        self.linger_bytes -= size_bytes
        if self.linger_bytes < 0:
            self.transport.close()

    def _peer(self) -> str:
        where = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        return f"{self.listener.name} {where}"


def error_response(status: int, message: str, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 response with inferd's JSON error body, closing the connection."""
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "content-type: application/json"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += [f"content-length: {len(body)}", "connection: close", "", ""]
    return "\r\n".join(head).encode("latin-1") + body
