"""The model pool's costs on this machine: a lazy model's first request (its load included) against
its warm requests, a repository load and unload, an eviction's turn (two models with room for one,
called alternately), and the memory an unload gives back as the OS reads it.

    python models/build_examples.py && python bench/pool.py [--rounds 5]

Each figure is a median over the rounds, in ms; memory in MiB (the workers' USS and RSS, read with
psutil just before the unload, and whether any worker process is left after it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import ServerProcess, free_port  # noqa: E402

TINY = REPO / "models" / "tiny.pt"
ROW = {"inputs": [[float(n) for n in range(16)]]}
ADMIN = {"Content-Type": "application/json"}


def config(port: int) -> str:
    model = "{{name: {name}, path: {path}, load: lazy, inputs: [{{name: input, shape: [-1, 16]}}]}}"
    models = "\n".join("  - " + model.format(name=name, path=TINY) for name in ("tiny", "other", "third"))
    return f"server: {{host: 127.0.0.1, port: {port}, pool: {{max_loaded_models: 2}}}}\nmodels:\n{models}\n"


def post(url: str, body: object) -> tuple[int, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), ADMIN, method="POST")
    with urllib.request.urlopen(request, timeout=300) as answer:
        return answer.status, json.load(answer)


def timed_ms(url: str, body: object) -> float:
    started = time.perf_counter()
    status, _ = post(url, body)
    assert status == 200
    return (time.perf_counter() - started) * 1000


def workers(base: str, model: str) -> list[int]:
    with urllib.request.urlopen(f"{base}/models", timeout=30) as answer:
        described = {m["name"]: m for m in json.load(answer)["models"]}
    return [w["pid"] for w in described[model]["workers"]]


def memory_mib(pids: list[int]) -> tuple[float, float]:
    infos = [psutil.Process(pid).memory_full_info() for pid in pids]
    return sum(i.uss for i in infos) / 2**20, sum(i.rss for i in infos) / 2**20


def one_round(base: str) -> dict[str, float]:
    predict = f"{base}/models/tiny/predict"
    figures = {"first request (lazy load)": timed_ms(predict, ROW)}
    figures["warm request"] = statistics.median(timed_ms(predict, ROW) for _ in range(20))
    pids = workers(base, "tiny")
    figures["worker USS MiB"], figures["worker RSS MiB"] = memory_mib(pids)
    figures["repository unload"] = timed_ms(f"{base}/v2/repository/models/tiny/unload", {})
    figures["workers left after unload"] = sum(psutil.pid_exists(pid) and _alive(pid) for pid in pids)
    figures["repository load"] = timed_ms(f"{base}/v2/repository/models/tiny/load", {})
    timed_ms(f"{base}/models/other/predict", ROW)  # tiny and other loaded: third evicts one per turn
    turns = [timed_ms(f"{base}/models/{model}/predict", ROW) for model in ("third", "tiny", "other", "third")]
    figures["request that evicts, then loads"] = statistics.median(turns)
    timed_ms(f"{base}/v2/repository/models/third/unload", {})
    timed_ms(f"{base}/v2/repository/models/other/unload", {})
    timed_ms(f"{base}/v2/repository/models/tiny/unload", {})
    return figures


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pool.yaml"
        path.write_text(config(port))
        argv = [sys.executable, "-m", "inferd", "serve", str(path)]
        with ServerProcess(argv, f"{base}/readyz", Path(folder) / "inferd.log"):
            rounds = [one_round(base) for _ in range(args.rounds)]
    print(f"load average {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}, {psutil.cpu_count()} CPUs")
    for name in rounds[0]:
        print(f"{name:36} {statistics.median(r[name] for r in rounds):10.1f}")


if __name__ == "__main__":
    main()
