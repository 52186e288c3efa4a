"""Soak: run one inferd under steady load (and optional worker kills) for a while, and print
throughput, status counts, latency percentiles and the RSS of the main process and its workers
every interval, so slow leaks and drift show up as numbers. Loopback only; bounded in time.

    python bench/soak.py CONFIG.yaml --model tiny --body '{"inputs": [[0.5, ...]]}' \
        [--minutes 10] [--clients 16] [--interval-s 30] [--kill-every-s 0]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Soak:
    def __init__(self, url: str, path: str, body: bytes, clients: int) -> None:
        self.url, self.path, self.body = url, path, body
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.latencies_s: list[float] = []
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    status = str(client.post(self.path, content=self.body, headers={"content-type": "application/json"}).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                with self.lock:
                    self.statuses[status] += 1
                    self.latencies_s.append(time.perf_counter() - started)

    def take(self) -> tuple[Counter[str], list[float]]:
        with self.lock:
            taken = self.statuses, sorted(self.latencies_s)
            self.statuses, self.latencies_s = Counter(), []
        return taken


def rss_mib(process: psutil.Process) -> tuple[float, float]:
    children = process.children(recursive=True)
    workers = sum(child.memory_info().rss for child in children if child.is_running())
    return process.memory_info().rss / 2**20, workers / 2**20


def kill_a_worker(url: str, model: str, chooser: random.Random) -> None:
    workers = [w for w in httpx.get(f"{url}/models", timeout=10).json()["models"] if w["name"] == model][0]["workers"]
    ready = [w["pid"] for w in workers if w["state"] == "ready"]
    if ready:
        os.kill(chooser.choice(ready), signal.SIGKILL)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"inferd exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("inferd was not ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--model", required=True)
    parser.add_argument("--body", required=True, help="the JSON body every request sends")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--interval-s", type=float, default=30.0)
    parser.add_argument("--kill-every-s", type=float, default=0.0, help="SIGKILL a random worker this often (0: never)")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "inferd", "serve", args.config, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_ready(url, server)
        run(args, url, psutil.Process(server.pid))
    finally:
        server.send_signal(signal.SIGTERM)
        print(f"inferd exited with {server.wait(60)}")


def run(args: argparse.Namespace, url: str, main_process: psutil.Process) -> None:
    soak = Soak(url, f"/models/{args.model}/predict", args.body.encode(), args.clients)
    for thread in soak.threads:
        thread.start()
    chooser, started = random.Random(0), time.monotonic()
    end, next_kill = started + 60 * args.minutes, started + (args.kill_every_s or float("inf"))
    print("elapsed_s  rps     p50_ms  p99_ms  main_rss_mib  workers_rss_mib  statuses")
    while time.monotonic() < end:
        interval_end = min(end, time.monotonic() + args.interval_s)
        while time.monotonic() < interval_end:
            if time.monotonic() >= next_kill:
                kill_a_worker(url, args.model, chooser)
                next_kill += args.kill_every_s
            time.sleep(min(0.2, max(0.0, interval_end - time.monotonic())))
        statuses, latencies = soak.take()
        count = len(latencies)
        p50 = 1000 * latencies[count // 2] if count else float("nan")
        p99 = 1000 * latencies[min(count - 1, int(0.99 * count))] if count else float("nan")
        main_mib, workers_mib = rss_mib(main_process)
        print(f"{time.monotonic() - started:9.0f}  {count / args.interval_s:6.1f}  {p50:6.1f}  {p99:6.1f}  "
              f"{main_mib:12.1f}  {workers_mib:15.1f}  {dict(statuses)}", flush=True)  # fmt: skip
    soak.stop.set()
    for thread in soak.threads:
        thread.join(70)


if __name__ == "__main__":
    main()
