"""Request bodies are held within server.max_request_bytes_held: past it new requests get 429 at
once, before their bodies are read, and the main process's memory stays within the budget plus a
fixed overhead however many bytes the clients send."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import RunningServer, wait_until
from tests.security.conftest import BUDGET_BYTES, MAX_REQUEST_BYTES
from tests.security.probes import (
    MIB,
    Watch,
    connect,
    has_answer,
    head,
    item_body,
    metric,
    read_answer,
    report,
    send_in_pieces,
)

# Decoding (one thread), the allocator's slack, sockets' buffers: what the process may add to
# the budget, however many bytes arrive.
OVERHEAD_BYTES = 96 * MIB
ADMITTED = BUDGET_BYTES // MAX_REQUEST_BYTES  # bodies of the largest size that fit at once


def _requests(server: RunningServer, code: str) -> float:
    return metric(server, "inferd_requests_total", model="sizes", code=code)


def _held(server: RunningServer) -> float:
    return metric(server, "inferd_request_bytes_held")


def test_withheld_bodies_are_held_within_the_budget(server: RunningServer) -> None:
    """30 clients each send 15 MiB of a 16 MiB body and withhold the rest."""
    clients, sent_bytes = 30, 15 * MIB
    body = item_body(MAX_REQUEST_BYTES)
    refused_before, gone_before = _requests(server, "429"), _requests(server, "499")
    sockets: list[socket.socket] = []
    with Watch(server) as watch:
        for _ in range(clients):
            sock = connect(server)
            sock.sendall(head("/models/sizes/predict", {"Content-Length": str(len(body))}))
            send_in_pieces(sock, body[:sent_bytes])
            sockets.append(sock)
        wait_until(lambda: _requests(server, "429") - refused_before == clients - ADMITTED, 60, "the refusals")
        held_bytes = _held(server)
        wait_until(lambda: sum(map(has_answer, sockets)) == clients - ADMITTED, 30, "the refused to be answered")
    answers = [read_answer(sock) for sock in sockets if has_answer(sock)]
    for sock in sockets:
        sock.close()
    wait_until(lambda: _requests(server, "499") - gone_before == ADMITTED, 60, "the admitted to count as 499")
    wait_until(lambda: _held(server) == 0, 30, "every byte to be released")
    report("30 clients withholding the last MiB of 16 MiB bodies", {
        "bytes sent (MiB)": clients * sent_bytes // MIB, "budget (MiB)": BUDGET_BYTES // MIB,
        "admitted / refused at once": f"{ADMITTED} / {len(answers)}",
        "inferd_request_bytes_held during (MiB)": held_bytes / MIB, **watch.figures(),
    })  # fmt: skip
    assert {status for status, _, _ in answers} == {429}
    assert all(headers.get("retry-after") == "1" for _, headers, _ in answers)
    assert b"max_request_bytes_held" in answers[0][2]
    assert held_bytes == ADMITTED * MAX_REQUEST_BYTES
    assert watch.rss_growth_bytes < BUDGET_BYTES + OVERHEAD_BYTES < clients * sent_bytes
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("size_mib", [16, 8])
def test_a_flood_of_bodies_whose_clients_left_stays_within_the_budget(server: RunningServer, size_mib: int) -> None:
    """Ten times the budget in whole bodies to a slow model, each client gone once it has sent."""
    size_bytes = size_mib * MIB
    requests = 10 * BUDGET_BYTES // size_bytes
    body = item_body(size_bytes)
    answered_before = sum(_requests(server, code) for code in ("200", "429", "499"))
    with Watch(server) as watch:
        for _ in range(requests):
            with connect(server) as sock:
                sock.sendall(head("/models/sizes/predict", {"Content-Length": str(len(body))}))
                send_in_pieces(sock, body)
        peak_held_bytes = _held(server)
        wait_until(
            lambda: sum(_requests(server, code) for code in ("200", "429", "499")) - answered_before == requests,
            120,
            "every request to be answered",
        )
    wait_until(lambda: _held(server) == 0, 30, "every byte to be released")
    report(f"{requests} bodies of {size_mib} MiB from clients that left", {
        "bytes sent (MiB)": requests * size_mib, "budget (MiB)": BUDGET_BYTES // MIB,
        "inferd_request_bytes_held after sending (MiB)": peak_held_bytes / MIB, **watch.figures(),
    })  # fmt: skip
    assert peak_held_bytes <= BUDGET_BYTES
    assert watch.rss_growth_bytes < BUDGET_BYTES + OVERHEAD_BYTES < requests * size_bytes
    assert "Traceback" not in server.log()


def test_a_chunked_body_is_refused_when_the_budget_runs_out(server: RunningServer) -> None:
    """Without Content-Length, bytes are reserved as chunks arrive; one past the budget ends it."""
    start, piece = b'{"inputs": ["', b"x" * MIB
    sizes = [MAX_REQUEST_BYTES] * (ADMITTED - 1) + [MAX_REQUEST_BYTES // 2]  # half a body's room left
    holders = [connect(server) for _ in sizes]
    for holder, size in zip(holders, sizes):
        holder.sendall(head("/models/sizes/predict", {"Content-Length": str(size)}) + start)
    wait_until(lambda: _held(server) == sum(sizes), 30, "the withheld bodies to be reserved")
    with connect(server) as sock:
        sock.sendall(head("/models/sizes/predict", {"Transfer-Encoding": "chunked"}))
        sock.sendall(b"%x\r\n%s\r\n" % (len(start), start))
        for _ in range(MAX_REQUEST_BYTES // MIB):  # past the room left, within max_request_bytes
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        wait_until(lambda: has_answer(sock), 30, "an answer to the chunked body")
        status, headers, answer = read_answer(sock)
    for holder in holders:
        holder.close()
    wait_until(lambda: _held(server) == 0, 30, "every byte to be released")
    assert (status, headers.get("retry-after")) == (429, "1"), answer
    assert b"max_request_bytes_held" in answer
