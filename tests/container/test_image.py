"""Build the production image with podman from this repository and run it as a deployment would.

    sudo python -m pytest -m container tests/container/test_image.py

The first fixture runs tests/container/setup_podman.sh (installs Debian's podman, runc, debootstrap
and prometheus where missing; builds the local stand-in for `python:3.11-slim` once). The module
then builds the Dockerfile as it is, runs the image with the repository's configs/ and the
image's own example models mounted as volumes, predicts through the published port, lets a real
Prometheus scrape it, and stops it: SIGTERM, a drain, exit status 0.

Skipped, with the reason, only where podman cannot run (not root, not Linux, no package manager,
or a kernel that refuses containers). Knobs: INFERD_TEST_TORCH_INDEX_URL (default PyPI; PyTorch's
own index is the image's default) and INFERD_TEST_FIND_LINKS (a folder of local wheels, default
the host pip's `find-links`, where the CPU torch wheel lies).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.container

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SETUP = HERE / "setup_podman.sh"
IMAGE = "localhost/inferd:ci"
STANDIN_BASE = "docker.io/library/python:3.11-slim"  # built by setup_podman.sh
STOP_TIMEOUT_S = 45  # above the example config's drain_timeout_s
Timer = Callable[[str], AbstractContextManager[None]]


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(HERE / "storage.conf")}  # fmt: skip


def podman(*args: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout_s
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{why()}")


def http(method: str, url: str, body: Any = None, timeout_s: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_wheels() -> Path | None:
    configured = os.environ.get("INFERD_TEST_FIND_LINKS")
    if configured is None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
        )
        configured = done.stdout.strip() if done.returncode == 0 else "/opt/wheels"
    path = Path(configured.split()[0]) if configured else None
    return path if path is not None and path.is_dir() else None


@pytest.fixture(scope="module")
def podman_ready(step_timer: Timer) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("podman containers need Linux")
    if os.geteuid() != 0:
        pytest.skip("rootful podman (and its setup with apt-get) needs root; CI runs this as root")
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        pytest.skip("neither podman nor apt-get (to install it) is available")
    with step_timer("setup_podman.sh (packages, stand-in python:3.11-slim)"):
        done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"setup_podman.sh exited {done.returncode}:\n{done.stderr[-4000:]}"
    with step_timer("podman smoke run"):
        smoke = podman("run", "--rm", "--pull=never", "python:3.11-slim", "true", check=False)
    if smoke.returncode != 0:
        pytest.skip(f"podman cannot run containers on this machine:\n{smoke.stderr[-2000:]}")


@pytest.fixture(scope="module")
def image(podman_ready: None, step_timer: Timer) -> Iterator[str]:
    """The image built from this repository; removed afterwards with every layer the build left,
    and the stand-in base too (INFERD_TEST_KEEP_IMAGES=1 keeps them, to rebuild faster)."""
    try:
        yield build_image(step_timer)
    finally:
        if os.environ.get("INFERD_TEST_KEEP_IMAGES") != "1":
            podman("rmi", "--force", IMAGE, STANDIN_BASE, check=False)
            podman("image", "prune", "--force", check=False)  # the build's dangling layers


def build_image(step_timer: Timer) -> str:
    index = os.environ.get("INFERD_TEST_TORCH_INDEX_URL", "https://pypi.org/simple")
    args = ["build", "--pull=never", "--format", "docker", "--tag", IMAGE,
            "--build-arg", f"TORCH_INDEX_URL={index}"]  # fmt: skip
    wheels = local_wheels()
    if wheels is not None:
        args += ["--build-arg", f"PIP_FIND_LINKS={wheels}", "--volume", f"{wheels}:{wheels}:ro"]
    with step_timer("podman build (CPU image)"):
        podman(*args, str(REPO), timeout_s=480)
    return IMAGE


@pytest.fixture(scope="module")
def example_models(image: str, tmp_path_factory: pytest.TempPathFactory, step_timer: Timer) -> Path:
    """The models the image built, copied out, to be mounted back in as a volume."""
    target = tmp_path_factory.mktemp("volumes") / "models"
    name = f"inferd-models-{os.getpid()}"
    with step_timer("copy the example models out of the image"):
        podman("create", "--name", name, image)
        try:
            podman("cp", f"{name}:/app/models", str(target))
        finally:
            podman("rm", "--force", name, check=False)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the image's user (uid 10001) reads them
    target.parent.chmod(0o755)
    return target


@dataclass
class Running:
    name: str
    url: str

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-6000:]

    def state(self) -> dict[str, Any]:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def answers(self, path: str) -> bool:
        """True once `path` answers 200; fails at once, with the logs, if the container exited."""
        if http("GET", self.url + path)[0] == 200:
            return True
        if not self.state()["Running"]:
            raise AssertionError(f"the container exited before {path} answered:\n{self.logs()}")
        return False


@pytest.fixture(scope="module")
def running(image: str, example_models: Path, step_timer: Timer) -> Iterator[Running]:
    name = f"inferd-ci-{os.getpid()}"
    with step_timer("podman run (to the published port answering)"):
        podman(
            "run", "--detach", "--name", name, "--pull=never",
            "--publish", "127.0.0.1::8080",
            "--volume", f"{REPO / 'configs'}:/app/configs:ro",
            "--volume", f"{example_models}:/app/models:ro",
            image, "configs/example.yaml", "--host", "0.0.0.0",
        )  # fmt: skip
        try:
            port = podman("port", name, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
            server = Running(name, f"http://127.0.0.1:{port}")
            wait_until(lambda: server.answers("/healthz"), 60, "/healthz", server.logs)
        except BaseException:
            podman("rm", "--force", "--time", "0", name, check=False)
            raise
    yield server
    podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture(scope="module")
def prometheus(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the container's published port every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (setup_podman.sh installs Debian's package)")
    home = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlsplit(running.url).netloc
    (home / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        f"scrape_configs:\n  - job_name: inferd\n    static_configs:\n      - targets: ['{target}']\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    log = (home / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
         f"--web.listen-address={urllib.parse.urlsplit(url).netloc}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_becomes_ready(running: Running, prometheus: str, step_timer: Timer) -> None:
    # Prometheus is started first (fixture order) so its start overlaps the models' loading.
    with step_timer("models loaded (/readyz 200)"):
        wait_until(lambda: running.answers("/readyz"), 180, "/readyz", running.logs)


def test_predicts_through_the_published_port(running: Running, step_timer: Timer) -> None:
    with step_timer("predictions (tiny, minilm)"):
        status, body = http("POST", running.url + "/models/tiny/predict", {"inputs": [[0.5] * 16]})
        assert status == 200, body
        (row,) = json.loads(body)["outputs"]
        assert len(row) == 16
        status, body = http("POST", running.url + "/models/minilm/predict", {"inputs": ["a container"]})
        assert status == 200, body
        (vector,) = json.loads(body)["outputs"]
        assert len(vector) == 384


def test_serves_metrics(running: Running) -> None:
    status, body = http("GET", running.url + "/metrics")
    assert status == 200
    text = body.decode()
    assert 'inferd_queue_depth{model="tiny"}' in text
    assert 'inferd_requests_total{code="200",model="tiny",protocol="http"}' in text


def test_image_healthcheck_passes(running: Running) -> None:
    done = podman("healthcheck", "run", running.name, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + running.logs()


def test_prometheus_scrapes_the_container(running: Running, prometheus: str, step_timer: Timer) -> None:
    def query(expression: str) -> list[dict[str, Any]]:
        url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        status, body = http("GET", url)
        return json.loads(body)["data"]["result"] if status == 200 else []

    with step_timer("prometheus scrape seen"):
        wait_until(
            lambda: bool(query('inferd_queue_depth{job="inferd", model="tiny"}'))
            and bool(query('inferd_requests_total{job="inferd", model="tiny", code="200"}')),
            60, "Prometheus to hold inferd's samples", running.logs,
        )  # fmt: skip
    (up,) = query('up{job="inferd"}')
    assert up["value"][1] == "1"


def test_stop_drains_and_exits_zero(running: Running, step_timer: Timer) -> None:
    """Last in the module: `podman stop` sends SIGTERM to inferd (PID 1), which drains and exits 0."""
    with step_timer("podman stop (SIGTERM, drain, exit)"):
        start = time.monotonic()
        podman("stop", "--time", str(STOP_TIMEOUT_S), running.name, timeout_s=STOP_TIMEOUT_S + 30)
        elapsed = time.monotonic() - start
    state = running.state()
    logs = running.logs()
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}\n{logs}"
    assert elapsed < STOP_TIMEOUT_S, f"stop took {elapsed:.1f} s: SIGTERM was not handled\n{logs}"
    assert "SIGTERM: draining" in logs, logs
