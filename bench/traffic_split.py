"""What a traffic split costs per request: the same echo model called directly and through a
split (one variant, so both reach the same worker), and through a split with a shadow copy of
every request to a second echo model. Sequential requests (c=1) over one keep-alive connection,
the three paths in turn;
prints p50 and p99 of each path and the split's added p50.

    python bench/traffic_split.py [--requests 2000]

On a small shared machine the figures move between runs: compare the rows of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procs import ServerProcess, free_port  # noqa: E402

HANDLERS = REPO / "tests" / "models" / "handlers.py"
PATHS = {"direct": "/models/echo/predict", "split": "/models/ab/predict", "split+shadow": "/models/ab_shadow/predict"}


def config(port: int) -> str:
    return f"""
server: {{host: 127.0.0.1, port: {port}, log_level: warning}}
models:
  - {{name: echo, handler: "{HANDLERS}:Faulty"}}
  - {{name: candidate, handler: "{HANDLERS}:Faulty"}}
  - {{name: ab, split: {{variants: [{{model: echo, weight: 1}}]}}}}
  - name: ab_shadow
    split: {{variants: [{{model: echo, weight: 1}}], shadow: {{model: candidate, share: 1.0}}}}
"""


def latencies_ms(client: httpx.Client, requests: int) -> dict[str, list[float]]:
    """Each path's latencies, the paths interleaved request by request so that they share the
    machine's moments alike."""
    found: dict[str, list[float]] = {name: [] for name in PATHS}
    for n in range(requests):
        for name, path in PATHS.items():
            started = time.perf_counter()
            answer = client.post(path, json={"inputs": [f"r{n}"]})
            found[name].append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "split.yaml"
        path.write_text(config(port))
        argv = [sys.executable, "-m", "inferd", "serve", str(path)]
        with (
            ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", Path(folder) / "log"),
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            latencies_ms(client, 100)  # warm the connection and the workers
            figures = latencies_ms(client, args.requests)
    direct_p50 = statistics.median(figures["direct"])
    for name, found in figures.items():
        p50, p99 = statistics.median(found), statistics.quantiles(found, n=100)[98]
        print(f"{name:13s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  p50 over direct {p50 - direct_p50:+6.2f} ms")


if __name__ == "__main__":
    main()
