"""inferd.quick_ack on real loopback TCP connections served by uvloop, as inferd's HTTP front is.

Linux reports through getsockopt(TCP_QUICKACK) whether a connection acknowledges at once (1) or
delays its ACKs as an interactive one (0, after an exchange of request and answer): the state a
client under Nagle's rule waits on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from inferd.quick_ack import quick_ack

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")


def exchanges(acknowledge: bool, count: int = 6) -> list[tuple[int, int]]:
    """(state at each read, state after it) on the server side of `count` request/answer exchanges."""
    states: list[tuple[int, int]] = []

    class Answering(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.sock = transport.get_extra_info("socket")
            self.ack_now: Callable[[], None] | None = quick_ack(transport)
            assert self.ack_now is not None

        def data_received(self, data: bytes) -> None:
            before = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)
            if acknowledge and self.ack_now is not None:
                self.ack_now()
            states.append((before, self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)))
            self.transport.write(b"a" * len(data))

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(b"q" * 100)
            await asyncio.wait_for(reader.readexactly(100), 10)
        writer.close()
        server.close()

    uvloop.run(run())
    return states


def test_a_read_leaves_the_delayed_ack_mode_an_exchange_put_the_connection_in() -> None:
    without = exchanges(acknowledge=False)
    assert any(before == 0 for before, _ in without), f"the kernel never delayed ACKs here: {without}"
    with_ack = exchanges(acknowledge=True)
    assert all(after == 1 for _, after in with_ack), with_ack


def test_a_unix_socket_has_nothing_to_acknowledge(tmp_path: Path) -> None:
    async def run() -> Callable[[], None] | None:
        made: list[Callable[[], None] | None] = []

        class Recording(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(quick_ack(transport))

        path = str(tmp_path / "s")
        server = await asyncio.get_running_loop().create_unix_server(Recording, path)
        _, writer = await asyncio.open_unix_connection(path)
        while not made:
            await asyncio.sleep(0)
        writer.close()
        server.close()
        return made[0]

    assert uvloop.run(run()) is None
