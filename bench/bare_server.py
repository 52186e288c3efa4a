"""The bare endpoint: one starlette route that runs the model inside the request handler.

    python bench/bare_server.py --model-path tiny.pt --name tiny --port 8090

One uvicorn process, no queue, no batching, no worker processes, stdlib JSON both ways: the simplest
server a user could write. It speaks inferd's native route (POST /models/{name}/predict with
{"inputs": [[...], ...]}) and GET /readyz, so the same load script drives it and inferd.
"""

from __future__ import annotations

import argparse
import sys

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


def build_app(name: str, model_path: str) -> Starlette:
    module = torch.jit.load(model_path).eval()

    async def predict(request: Request) -> JSONResponse:
        if request.path_params["name"] != name:
            return JSONResponse(
                {"error": f"no model {request.path_params['name']!r}"}, status_code=404
            )
        body = await request.json()
        with torch.inference_mode():
            outputs = module(torch.tensor(body["inputs"], dtype=torch.float32))
        return JSONResponse({"outputs": outputs.tolist()})

    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/models/{name}/predict", predict, methods=["POST"]),
            Route("/readyz", ready),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    app = build_app(args.name, args.model_path)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
