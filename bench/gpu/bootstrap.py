"""Make the serving stack importable on a lent machine from the wheels carried in `.whl/`.

The lent GPU machine has torch and friends but not starlette, uvicorn, pydantic, multiprocess,
orjson, httptools or setproctitle, and reaches no registry. `bench/gpu_wheels.sh` downloads them
here; this installs them into a folder of their own (never into the machine's Python) and re-executes
the check with PYTHONPATH naming that folder and this checkout, so `inferd serve` subprocesses see
the same packages and the same inferd.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEELS = REPO_ROOT / ".whl"
SITE = Path(os.environ.get("INFERD_GPU_SITE", "/tmp/site"))
REQUIRED = ("starlette", "uvicorn", "pydantic", "multiprocess", "orjson", "yaml", "numpy", "httpx", "psutil")
_MARKER = "INFERD_GPU_CHECK_BOOTSTRAPPED"


def missing_modules() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def ensure_dependencies() -> str:
    """Return a note on where the packages came from; re-executes this process once if it
    installs wheels; exits with a clear message if something stays missing."""
    missing = missing_modules()
    if not missing:
        _export_pythonpath()
        return "packages: already importable" if not os.environ.get(_MARKER) else f"packages: wheels from {WHEELS}"
    if os.environ.get(_MARKER) or not list(WHEELS.glob("*.whl")):
        sys.exit(
            f"gpu_check: cannot import {', '.join(missing)}; run bench/gpu_wheels.sh on a machine with pip "
            f"access and carry {WHEELS.name}/ (looked in {WHEELS})"
        )
    _install_wheels()
    env = dict(os.environ, **{_MARKER: "1"})
    env["PYTHONPATH"] = _pythonpath(env.get("PYTHONPATH"))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise AssertionError("unreachable")


def _install_wheels() -> None:
    wheels = sorted(str(path) for path in WHEELS.glob("*.whl"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(SITE),
        *wheels,
    ]
    finished = subprocess.run(command, check=False, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"gpu_check: installing the wheels failed:\n{finished.stdout}{finished.stderr}")


def _pythonpath(current: str | None) -> str:
    parts = [str(SITE), str(REPO_ROOT), *(current.split(os.pathsep) if current else [])]
    return os.pathsep.join(dict.fromkeys(part for part in parts if part))


def _export_pythonpath() -> None:
    """Subprocesses (inferd serve, its workers) import this checkout's inferd, whatever is installed."""
    site = [str(SITE)] if os.environ.get(_MARKER) else []
    current = os.environ.get("PYTHONPATH")
    parts = [*site, str(REPO_ROOT), *(current.split(os.pathsep) if current else [])]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(part for part in parts if part))
