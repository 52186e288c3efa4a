"""Worker processes as the main process sees them: starting one, learning when and how it exited,
killing it.

Workers are forked by a fork helper (multiprocess's forkserver, preloaded with torch by
`inferd.fork_helper`; spawn where there is none), never by the main process itself, so starting one
is safe while the main process runs threads and an event loop. The helper is no single point of
failure:
- a worker watches the main process, not its parent, so it outlives a helper that dies;
- the main process is a child subreaper (Linux): a worker whose helper died is re-parented to the
  main process, which reaps it and reads its real exit status;
- each worker is watched and signalled through a pidfd, which tells its exit whoever its parent
  is, and never signals a process that later reused its pid;
- multiprocess starts a new helper for the next worker once the old one is gone.
Where pidfds are missing, multiprocess's own sentinel (the helper's report) is used instead.

This is the only module that imports multiprocess.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

import multiprocess
import multiprocess.forkserver

from inferd.channel import Channel

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
REAP_TIMEOUT_S = 1.0  # the helper reports a status a moment after the exit
# Starts run off the event loop (a new helper imports torch before it forks: seconds); multiprocess's
# helper and Python's warnings filters are process-wide, so starts go one at a time.
_START_LOCK = threading.Lock()


class StartFailed(Exception):
    """A worker process could not be started (e.g. its fork helper died while forking it)."""


class WorkerProcess:
    """One started worker: `exited_fd` becomes readable when it exits; `reap` then gives its status."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid = int(process.pid)
        self._pidfd = _open_pidfd(self.pid)
        self.exited_fd: int = self._pidfd if self._pidfd is not None else process.sentinel
        self._reaped = False
        self._exit_code: int | None = None

    def kill(self) -> None:
        if self._reaped:
            return
        if self._pidfd is None:
            self._process.kill()
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except ProcessLookupError:  # already exited, not yet reaped
            pass

    def reap(self) -> int | None:
        """The exit code once the process has exited (negative: the signal that ended it); None
        where nobody can tell (its helper died without a subreaper to inherit it)."""
        if self._reaped:
            return self._exit_code
        self._reaped = True
        self._exit_code = _reap_own_child(self.pid)
        if self._exit_code is None:  # still the helper's child: the helper reaps it and reports the status
            self._process.join(timeout=REAP_TIMEOUT_S)
            self._exit_code = self._process.exitcode
        if self._pidfd is not None:
            os.close(self._pidfd)
        return self._exit_code


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or it already exited: use the sentinel
        return None


def _reap_own_child(pid: int) -> int | None:
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if reaped else None


def become_subreaper() -> bool:
    """Make orphaned descendants (workers whose helper died) children of this process."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux
        return False


def _context() -> Any:
    """The forkserver context, its helper preloaded with torch (started by `start_fork_helper` or on
    first use), where the platform has one: a worker then starts as a fork of a process that has
    imported torch but never run it, in well under a second, instead of a fresh interpreter
    importing torch for seconds. The main process itself never imports torch either way."""
    if "forkserver" not in multiprocess.get_all_start_methods():
        return multiprocess.get_context("spawn")
    context = multiprocess.get_context("forkserver")
    context.set_forkserver_preload(["inferd.fork_helper"])
    return context


def start_fork_helper() -> None:
    """Launch the fork helper now, without waiting for it: its import of torch (seconds) then runs
    beside the rest of the daemon's start-up instead of before the first worker. Returns at once;
    the first `start_worker` waits for the helper as it always does."""
    with _START_LOCK:
        if _context().get_start_method() == "forkserver":  # none to start under spawn
            multiprocess.forkserver.ensure_running()


def start_worker(target: Callable[..., Any], args: tuple[Any, ...], name: str) -> tuple[WorkerProcess, socket.socket]:
    """Start `target(*args, channel)` in a new process; return it and the main end of its channel.
    Blocking (for seconds when the helper must be started first): call it from a thread."""
    with _START_LOCK:
        return _start_worker(target, args, name)


def _start_worker(target: Callable[..., Any], args: tuple[Any, ...], name: str) -> tuple[WorkerProcess, socket.socket]:
    become_subreaper()  # idempotent; before the first fork so no worker is ever orphaned to init
    context = _context()
    main_end, worker_end = context.Pipe(duplex=True)
    process = context.Process(target=target, args=(*args, Channel(worker_end)), name=name, daemon=False)
    try:
        _start_logging_warnings(process)
    except (OSError, EOFError, ValueError) as error:  # the helper died mid-request; it is relaunched next time
        main_end.close()
        raise StartFailed(f"{type(error).__name__}: {error}") from None
    finally:
        worker_end.close()  # the child holds its own copy; ours must close so EOF is seen when it dies
    main_socket = socket.socket(fileno=os.dup(main_end.fileno()))
    main_end.close()
    return WorkerProcess(process), main_socket


def discard(started: tuple[WorkerProcess, socket.socket]) -> None:
    """Kill a worker whose start was abandoned (its supervisor stopped meanwhile)."""
    process, main_socket = started
    process.kill()
    main_socket.close()


def _start_logging_warnings(process: Any) -> None:
    """multiprocess warns (to stderr, with a source line) when it relaunches a helper that died;
    that is an expected event: one log line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        process.start()
    for warning in caught:
        log.warning("%s", warning.message)
