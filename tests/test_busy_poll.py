"""Busy polling (inferd/busy_poll.py): the worker's poll stops where it catches nothing and comes
back when traffic does; a poll returns as soon as a real socket has data, and gives up after its
window; the main process's spinner turns only while a watched batch is out."""

from __future__ import annotations

import asyncio
import socket
import threading

from inferd.busy_poll import PAYING_HITS, PROBE_EVERY, RECENT, LoopSpinner, WorkerPoll, poll_until, worker_window_s
from inferd.placement import WorkerSlot


def readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def test_a_poll_returns_once_data_comes_and_gives_up_after_its_window() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not poll_until(lambda: readable(ours), 0.02)  # nothing sent: the window ran out
        sender = threading.Timer(0.05, theirs.send, args=(b"x",))
        sender.start()
        assert poll_until(lambda: readable(ours), 30.0)  # returns when the byte comes, not after 30 s
        sender.join()
        assert poll_until(lambda: readable(ours), 0.0)  # already there: true without waiting


def test_the_worker_stops_polling_where_polls_catch_nothing_and_probes_to_come_back() -> None:
    poll = WorkerPoll(0.001)
    assert poll.should_poll()  # it starts by trying
    for _ in range(RECENT - PAYING_HITS + 1):
        poll.polled(False)
    decisions = [poll.should_poll() for _ in range(2 * PROBE_EVERY)]
    assert decisions.count(True) == 2 and decisions[PROBE_EVERY - 1] and decisions[-1]  # a probe in every PROBE_EVERY
    for _ in range(PAYING_HITS):
        poll.polled(True)  # traffic came back: the probes caught their batches
    assert all(poll.should_poll() for _ in range(3 * PROBE_EVERY))


def test_a_zero_window_never_polls() -> None:
    poll = WorkerPoll(0.0)
    assert not any(poll.should_poll() for _ in range(3 * PROBE_EVERY))


def test_a_heads_up_polls_even_where_the_worker_would_not_and_leaves_no_record() -> None:
    poll = WorkerPoll(0.001)
    for _ in range(RECENT):
        poll.polled(False)  # sparse traffic: its own polling has switched itself off
    ours, theirs = socket.socketpair()
    with ours, theirs:
        for _ in range(PAYING_HITS):  # as many as would switch it back on, were they counted
            poll.told(30.0)
            sender = threading.Timer(0.02, theirs.send, args=(b"x",))
            sender.start()
            poll.wait(lambda: readable(ours))  # returns when the batch comes, not after 30 s
            sender.join()
            assert ours.recv(1) == b"x"
    decisions = [poll.should_poll() for _ in range(PROBE_EVERY)]
    assert decisions.count(True) == 1  # still off but for its probe: a told poll is no guess that paid


def test_the_spinner_turns_while_a_watched_future_is_out_and_stops_after() -> None:
    async def scenario() -> tuple[int, int, int, bool]:
        loop = asyncio.get_running_loop()
        spinner = LoopSpinner()
        answer: asyncio.Future[None] = loop.create_future()
        spinner.watch(answer, loop.time() + 60)
        loop.call_later(0.2, answer.set_result, None)
        await answer
        await asyncio.sleep(0.01)
        spun = spinner.turns
        expired: asyncio.Future[None] = loop.create_future()
        spinner.watch(expired, loop.time())  # a deadline already past: nothing to spin for
        await asyncio.sleep(0.05)
        return spun, spinner.turns, spinner.watching, expired.done()

    spun, after, watching, expired_done = asyncio.run(scenario())
    assert spun >= 2  # the loop kept turning for the answer, where it would have slept until the timer
    assert after == spun and watching == 0 and not expired_done  # and stopped once there was nothing to wait for


def test_a_spinner_outlives_its_event_loop() -> None:
    spinner = LoopSpinner()

    async def watch_one() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        spinner.watch(future, asyncio.get_running_loop().time() + 0.01)
        await asyncio.sleep(0.05)
        assert spinner.watching == 0

    asyncio.run(watch_one())
    asyncio.run(watch_one())  # a second loop gets a task of its own


def test_a_long_batch_is_spun_for_only_around_its_expected_time() -> None:
    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        spinner = LoopSpinner()
        answer: asyncio.Future[None] = loop.create_future()
        loop.call_later(1.0, answer.set_result, None)
        spinner.watch_around(answer, expected_s=1.0, window_s=0.2)  # spins from 0.9 s
        await asyncio.sleep(0.05)
        early = spinner.turns
        await answer
        return early, spinner.turns

    early, spun = asyncio.run(scenario())
    assert early == 0 and spun >= 2


def test_only_a_worker_on_cpus_of_its_own_polls() -> None:
    alone, beside = WorkerSlot("net", "cpu", 0, (0, 1), 2), WorkerSlot("net", "cpu", 1, (2, 3), 2)
    decode = WorkerSlot("decode", "cpu", 0, (1,), 1)  # a pipeline step pinned onto the network's cores
    gpu = WorkerSlot("big", "cuda:0", 0, (), 1)
    assert worker_window_s(0.001, alone, [alone, beside, gpu]) == 0.001
    assert worker_window_s(0.001, alone, [alone, beside, decode]) == 0.0
    assert worker_window_s(0.001, decode, [alone, decode]) == 0.0
    assert worker_window_s(0.001, gpu, [alone, gpu]) == 0.0  # unpinned: it may run beside anyone
