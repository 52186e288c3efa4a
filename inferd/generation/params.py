"""A generation request's parameters, read from its JSON body and checked against the model's
caps before anything is queued: each refusal is a 400 naming the number and the cap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferd.config import GenerationConfig
from inferd.errors import BadRequest
from inferd.messages import Sampling

MAX_STOP_STRINGS = 4
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    max_prompt_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool


def read_params(body: dict[str, Any], model: str, limits: GenerationConfig) -> GenerationParams:
    max_tokens = _max_tokens(body, model, limits)
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=_seed(body.get("seed")),
    )
    if sampling.top_p == 0:
        raise BadRequest("top_p must be above 0 and at most 1, got 0")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}")
    return GenerationParams(max_tokens, limits.max_prompt_tokens, sampling, _stop(body.get("stop")), stream)


def _max_tokens(body: dict[str, Any], model: str, limits: GenerationConfig) -> int:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    if value is None:
        return limits.default_max_tokens
    if not _is_int(value) or value < 1:
        raise BadRequest(f"max_tokens must be a whole number of at least 1, got {value!r}")
    if value > limits.max_tokens:
        raise BadRequest(
            f"max_tokens is {value}; model {model!r} generates at most {limits.max_tokens} tokens per request "
            "(generation.max_tokens); ask for fewer"
        )
    return int(value)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _seed(value: Any) -> int | None:
    if value is not None and not _is_int(value):
        raise BadRequest(f"seed must be a whole number, got {value!r}")
    return value  # type: ignore[no-any-return]


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(f"stop must be a non-empty string or a list of them, got {value!r}")
    if len(stops) > MAX_STOP_STRINGS:
        raise BadRequest(f"stop lists {len(stops)} strings; give at most {MAX_STOP_STRINGS}")
    return tuple(stops)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_messages(value: Any) -> list[dict[str, str]]:
    """Chat messages: a non-empty list of {"role": ..., "content": "..."}."""
    if not isinstance(value, list) or not value:
        raise BadRequest("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI's content parts: only text ones are understood
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise BadRequest(f"messages[{index}].content must be a string")
        messages.append({"role": message["role"], "content": content})
    return messages


def read_prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # OpenAI's batch form with one prompt
    if not isinstance(value, str):
        raise BadRequest("prompt must be a string")
    return value
