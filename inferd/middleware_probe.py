"""Checking a config's middleware for `inferd validate` in a child process: importing and building
them runs the user's code, whose side effects (a hang, `sys.exit`, a crash) must not reach the
checking process. The child is forked as a worker is (`process.start_worker`), writes a JSON list
of problems, each at its YAML path, to a file and exits; a child that outruns its deadline is killed.
"""

from __future__ import annotations

import json
import os
import select
import tempfile
from pathlib import Path
from typing import Any

from inferd.config import MiddlewareSpec, ModelConfig
from inferd.process import start_worker
from inferd.worker import exit_with_main_process

Models = list[tuple[int, ModelConfig]]


def run_middleware_probe(
    server: tuple[MiddlewareSpec, ...], models: Models, base_dir: Path, timeout_s: float
) -> list[str]:
    models = [(index, model) for index, model in models if model.middleware]
    if not server and not models:
        return []
    with tempfile.TemporaryDirectory(prefix="inferd-probe-") as folder:
        result = Path(folder) / "problems.json"
        args = (server, models, str(base_dir), str(result), os.getpid())
        process, main_socket = start_worker(_child_main, args, "inferd-probe middleware")
        main_socket.close()  # the child reports through its result file
        exited, _, _ = select.select([process.exited_fd], [], [], timeout_s)
        if not exited:
            process.kill()
        exit_code = process.reap()
        if exited and result.exists():
            return list(json.loads(result.read_text()))
    where = "server.middleware" if server else f"models[{models[0][0]}].middleware"
    if not exited:
        return [f"{where}: importing and building the middleware did not finish within {timeout_s:g} s"]
    return [f"{where}: the check process ended (status {exit_code}) while importing the middleware"]


def _child_main(
    server: tuple[MiddlewareSpec, ...], models: Models, base_dir: str, result: str, main_pid: int, channel: Any
) -> None:
    from inferd.protocols.middleware import middleware_problems

    exit_with_main_process(main_pid)
    Path(result).write_text(json.dumps(middleware_problems(server, models, Path(base_dir))))
