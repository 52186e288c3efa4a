"""The bare server of check 8 as a uvicorn app factory, so `uvicorn --workers N` can start N copies.

Each process loads the TorchScript model itself (one torch thread: N processes share the cores)
and marks itself ready with a file named by its pid, so the check waits for all N, not the first.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from bare_server import build_app
from starlette.applications import Starlette


def create_app() -> Starlette:
    torch.set_num_threads(1)
    app = build_app(os.environ["INFERD_BARE_NAME"], os.environ["INFERD_BARE_MODEL"])
    Path(os.environ["INFERD_BARE_READY_DIR"], str(os.getpid())).touch()
    return app
