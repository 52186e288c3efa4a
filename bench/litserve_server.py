"""The same model behind LitServe, for comparison. Runs in LitServe's own venv, not inferd's.

    /work/venvs/litserve/bin/python bench/litserve_server.py --model-path tiny.pt --name tiny \
        --port 8091 --max-batch-size 32 --batch-timeout-ms 5 --workers 2

It serves POST /models/{name}/predict with {"inputs": [[...], ...]} (the native route's shape) so the
same load script drives it; readiness is LitServe's GET /health.
"""

from __future__ import annotations

import argparse
import sys

import litserve as ls
import torch


class TorchScriptAPI(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path
        self.rows_per_request: list[int] = []

    def setup(self, device: str) -> None:
        self.model = torch.jit.load(self.model_path).eval()

    def decode_request(self, request: dict) -> torch.Tensor:
        return torch.tensor(request["inputs"], dtype=torch.float32)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        # One inference loop per worker process, so remembering the split here is safe.
        self.rows_per_request = [int(x.shape[0]) for x in inputs]
        return torch.cat(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output.split(self.rows_per_request))

    def encode_response(self, output: torch.Tensor) -> dict:
        return {"outputs": output.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="inference workers per device")
    parser.add_argument(
        "--api-servers", type=int, help="HTTP server processes (LitServe's default: one per worker)"
    )
    parser.add_argument(
        "--fast-queue", action="store_true", help="ZeroMQ queues instead of multiprocessing"
    )
    args = parser.parse_args(argv)
    api = TorchScriptAPI(
        args.model_path,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
        api_path=f"/models/{args.name}/predict",
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=args.workers,
        fast_queue=args.fast_queue,
        timeout=30,
    )
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
