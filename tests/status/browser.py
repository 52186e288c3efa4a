"""A headless Chromium driven over the DevTools protocol through a pipe (`--remote-debugging-pipe`):
the standard library only, and no port to race for.

The protocol on the pipe: JSON messages, each ended by a NUL byte; commands go in on the browser's
fd 3 and answers and events come out of its fd 4. A tab is a target attached in flat mode, so its
commands carry the session id. Events that tell of a broken page (an uncaught exception, an error
in the console, a Content-Security-Policy refusal) are kept per tab for the test to check.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    "chromium is not installed, and the status page is tested in it: install Debian's package "
    "(`apt-get install -y chromium`, as root) and run the tests again"
)
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)  # fmt: skip


def chromium_executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    pass


@dataclass
class Tab:
    session_id: str
    target_id: str
    problems: list[str] = field(default_factory=list)  # exceptions and console errors, as text


class Browser:
    def __init__(self, executable: str, profile_dir: Path, log_path: Path) -> None:
        commands_in, self._commands = _pipe_above(10)
        self._answers, answers_out = _pipe_above(10)
        argv = [executable, *_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"]
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # The log first: it may itself be fd 3 or 4, which the pipes then take.
        actions = [(os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
                   (os.POSIX_SPAWN_DUP2, commands_in, 3), (os.POSIX_SPAWN_DUP2, answers_out, 4)]  # fmt: skip
        # Its own session, so its renderer and helper processes can be ended with it.
        self.pid = os.posix_spawn(executable, argv, os.environ, file_actions=actions, setsid=True)
        for fd in (commands_in, answers_out, log):
            os.close(fd)
        self.log_path = log_path
        self._buffer = b""
        self._next_id = 0
        self._tabs: dict[str, Tab] = {}

    # ---- the protocol ------------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None, tab: Tab | None = None,
             timeout_s: float = 60.0) -> dict[str, Any]:  # fmt: skip
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if tab is not None:
            message["sessionId"] = tab.session_id
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self._receive(deadline, method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))
            self._note_event(answer)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left_s = deadline - time.monotonic()
            if left_s <= 0 or not select.select([self._answers], [], [], left_s)[0]:
                raise BrowserError(f"chromium did not answer {waiting_for}; its log: {self.log_path}")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium exited while answering {waiting_for}; its log: {self.log_path}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def _note_event(self, event: dict[str, Any]) -> None:
        tab = self._tabs.get(event.get("sessionId", ""))
        method, params = event.get("method"), event.get("params", {})
        if tab is None:
            return
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            tab.problems.append(details.get("exception", {}).get("description") or details.get("text", "?"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            tab.problems.append(params["entry"]["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            tab.problems.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))

    # ---- tabs --------------------------------------------------------------------------------

    def open(self, url: str, width: int = 1280, height: int = 900) -> Tab:
        target_id = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target_id, "flatten": True})
        tab = self._tabs[attached["sessionId"]] = Tab(attached["sessionId"], target_id)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", tab=tab)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, tab=tab)
        self.call("Page.navigate", {"url": url}, tab=tab)
        return tab

    def evaluate(self, tab: Tab, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, tab=tab)
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression!r} raised: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, tab: Tab, expression: str, timeout_s: float, what: str) -> Any:
        """The first truthy value of `expression`, evaluated in the tab until `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(tab, expression)
            except BrowserError as error:  # e.g. evaluated while the page was being replaced
                last = str(error)
            else:
                if last:
                    return last
            self._pump(0.1)  # events that arrive meanwhile are noted, and the page gets time to run
        raise BrowserError(f"timed out after {timeout_s} s waiting for {what}; last value {last!r}")

    def _pump(self, duration_s: float) -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and select.select([self._answers], [], [], deadline - time.monotonic())[0]:
            try:
                self._note_event(self._receive(deadline, "events"))
            except BrowserError:
                return  # no whole message before the deadline: the rest is read next time

    def screenshot(self, tab: Tab, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, tab=tab)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close_tab(self, tab: Tab) -> None:
        self.call("Target.closeTarget", {"targetId": tab.target_id})
        self._tabs.pop(tab.session_id, None)

    def close(self, timeout_s: float = 20.0) -> None:
        try:
            self.call("Browser.close", timeout_s=timeout_s)
        except (BrowserError, OSError):
            pass  # it may close the pipe before it answers
        if not _exited(self.pid, timeout_s):
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        try:
            os.killpg(self.pid, signal.SIGKILL)  # any helper process of its session still left
        except ProcessLookupError:
            pass
        for fd in (self._commands, self._answers):
            os.close(fd)


def _exited(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return True
        time.sleep(0.05)
    return False


def _pipe_above(lowest: int) -> tuple[int, int]:
    """A pipe whose ends are numbered `lowest` or more, so moving them to fds 3 and 4 in the
    child cannot overwrite one with the other."""
    ends = os.pipe()
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest) for fd in ends)
    for fd in ends:
        os.close(fd)
    return moved[0], moved[1]
