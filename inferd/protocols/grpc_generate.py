"""ModelStreamInfer on a generative model, answered as Triton's decoupled models answer it: one
ModelStreamInferResponse per generated chunk, as the sequence makes them.

Request: the prompt in a BYTES input `text_input` of one element (the name Triton's LLM backends
use). The generation settings `max_tokens`, `temperature`, `top_p`, `seed` and `stop` come from the
request's parameters, or from inputs of those names with one element each (as Triton's LLM models
take them); the same limits and messages as `POST /models/<name>/generate` apply.
Each response: output `text_output` (BYTES, shape [1]) with the chunk's new text, and parameters
`triton_final_response` (true on the sequence's last response), `completion_tokens` and, on the
last, `finish_reason` and `prompt_tokens`. A failure ends that request with the stream's
`error_message`; the stream goes on with the next request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from inferd.daemon import ServedModel
from inferd.errors import BadRequest
from inferd.generation.params import read_params
from inferd.generation.scheduler import failure_error
from inferd.messages import Chunk
from inferd.protocols import grpc_codec
from inferd.protocols.generate import submit
from inferd.protocols.grpc_pb import grpc_service_pb2 as pb
from inferd.protocols.grpc_wire import InferCall
from inferd.protocols.shm import SharedMemory
from inferd.protocols.v2 import VERSION

PROMPT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
SETTINGS = ("max_tokens", "temperature", "top_p", "seed", "stop")


async def generate(
    model: ServedModel, call: InferCall, regions: SharedMemory
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """The responses for one request, a RequestError raised where the sequence fails."""
    assert model.config.generation is not None
    prompt, settings = read_request(call, regions)
    params = read_params(settings, model.name, model.config.generation)
    stream = submit(model, prompt, params)
    completion_tokens = 0
    try:
        async for chunk in stream:
            if chunk.failure is not None:
                raise failure_error(model.name, chunk.failure)
            completion_tokens += chunk.tokens
            yield pb.ModelStreamInferResponse(
                infer_response=_response(model.name, call.message.id, chunk, completion_tokens)
            )
    finally:
        stream.close()  # a call cancelled mid-sequence frees its slot at once


def read_request(call: InferCall, regions: SharedMemory) -> tuple[str, dict[str, Any]]:
    request, _ = grpc_codec.decode_infer_request(call, regions)
    if PROMPT_INPUT not in request.inputs:
        raise BadRequest(f"a generative model takes the prompt in a BYTES input {PROMPT_INPUT!r} of one element")
    unknown = set(request.inputs) - {PROMPT_INPUT, *SETTINGS}
    if unknown:
        raise BadRequest(f"inputs {sorted(unknown)} are not known; give {PROMPT_INPUT!r} and any of {list(SETTINGS)}")
    settings = {key: value for key, value in request.parameters.items() if key in SETTINGS}
    for name in SETTINGS:
        if name in request.inputs:
            settings[name] = _one_value(request.inputs[name], name)
    prompt = _one_value(request.inputs[PROMPT_INPUT], PROMPT_INPUT)
    if not isinstance(prompt, str):
        raise BadRequest(f"input {PROMPT_INPUT!r} must be BYTES holding UTF-8 text")
    return prompt, settings


def _one_value(array: np.ndarray, name: str) -> Any:
    if array.size != 1:
        raise BadRequest(f"input {name!r} must hold one element, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise BadRequest(f"input {name!r} is not UTF-8 text") from None
    return value.item() if isinstance(value, np.generic) else value


def _response(model: str, request_id: str, chunk: Chunk, completion_tokens: int) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=VERSION, id=request_id)
    response.outputs.add(name=TEXT_OUTPUT, datatype="BYTES", shape=[1])
    text = chunk.text.encode()
    response.raw_output_contents.append(len(text).to_bytes(4, "little") + text)
    parameters = response.parameters
    parameters["triton_final_response"].bool_param = chunk.final
    parameters["completion_tokens"].int64_param = completion_tokens
    if chunk.prompt_tokens is not None:
        parameters["prompt_tokens"].int64_param = chunk.prompt_tokens
    if chunk.finish_reason is not None:
        parameters["finish_reason"].string_param = chunk.finish_reason
    return response
