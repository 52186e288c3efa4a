"""Microseconds per v2 encode and decode of one FP32 tensor (1,024 floats by default), JSON and binary.

Also times the alternatives the codec chose against (stdlib json, orjson over .tolist()), so the
choice can be re-checked on another machine:

    python bench/codec_v2.py [--elements 1024] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from functools import partial

import numpy as np
import orjson

from inferd.protocols.v2_codec import decode_infer_request, encode_infer_response


def best_us(function: Callable[[], object], repeat: int) -> float:
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number * 1e6


def request_bodies(values: np.ndarray) -> dict[str, tuple[bytes, int | None]]:
    spec = {"name": "x", "datatype": "FP32", "shape": [1, values.size]}
    json_body = orjson.dumps({"inputs": [{**spec, "data": values.tolist()}]})
    header = orjson.dumps({"inputs": [{**spec, "parameters": {"binary_data_size": values.nbytes}}]})
    return {"json": (json_body, None), "binary": (header + values.tobytes(), len(header))}


def encode_alternatives(values: np.ndarray) -> dict[str, Callable[[], object]]:
    def document(data: object) -> dict[str, object]:
        output = {"name": "y", "datatype": "FP32", "shape": [1, values.size], "data": data}
        return {"model_name": "m", "model_version": "1", "outputs": [output]}

    return {
        "stdlib json, .tolist()": lambda: json.dumps(document(values.tolist())).encode(),
        "orjson, .tolist()": lambda: orjson.dumps(document(values.tolist())),
        "orjson, numpy buffer": lambda: orjson.dumps(
            document(values), option=orjson.OPT_SERIALIZE_NUMPY
        ),
    }


def decode_alternatives(json_body: bytes) -> dict[str, Callable[[], object]]:
    def with_loader(load: Callable[[bytes], dict]) -> Callable[[], object]:
        def run() -> object:
            data = load(json_body)["inputs"][0]["data"]
            return np.asarray(data, dtype=np.float32)

        return run

    return {
        "stdlib json + asarray": with_loader(json.loads),
        "orjson + asarray": with_loader(orjson.loads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    values = np.random.default_rng(0).standard_normal(args.elements).astype(np.float32)
    outputs = {"y": values.reshape(1, -1)}
    print(
        f"FP32 tensor of {args.elements} elements; best of {args.repeat} runs, microseconds per call"
    )
    for form, (body, header_length) in request_bodies(values).items():
        binary = {"y"} if form == "binary" else set()
        decode_us = best_us(partial(decode_infer_request, body, header_length), args.repeat)
        encode = partial(encode_infer_response, "m", "1", None, outputs, binary)
        encode_us = best_us(encode, args.repeat)
        print(f"  codec {form:6}  decode {decode_us:8.1f} us   encode {encode_us:8.1f} us")
    print("alternatives, encode:")
    for name, run in encode_alternatives(values).items():
        print(f"  {name:28} {best_us(run, args.repeat):8.1f} us")
    print("alternatives, decode:")
    for name, run in decode_alternatives(request_bodies(values)["json"][0]).items():
        print(f"  {name:28} {best_us(run, args.repeat):8.1f} us")


if __name__ == "__main__":
    main()
