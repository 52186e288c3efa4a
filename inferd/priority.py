"""Request priorities: what a request may ask for, and what a model's config allows.

Priorities are numbered as Triton numbers them: 1 is the highest, `priority_levels` the lowest, and
0 (or no priority at all) means the model's `default_priority_level`. So with the defaults (three
levels, default 2) a caller can go ahead of ordinary traffic (1) or step behind it (3). A request
gives its priority in the v2 `parameters.priority` (HTTP and gRPC), or in an `X-Priority` header
(gRPC metadata `x-priority`) on any route; where it gives both, the parameter wins. A value outside
the model's range is the caller's fault: 400, naming the value and the range.

How a queue orders by level, and how a waiting request is promoted, is priority_queue.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inferd.errors import BadRequest

if TYPE_CHECKING:
    from inferd.config import ModelConfig

HEADER = "x-priority"
PARAMETER = "priority"
DEFAULT_LEVELS = 3
DEFAULT_LEVEL = 2
# Without a configured promotion limit: half the request's deadline, so a starving request is
# promoted well before it times out, and at most a second, which is many batches on any model.
MAX_DEFAULT_PROMOTE_AFTER_S = 1.0
_MAX_DIGITS = 6  # a longer number is refused unconverted


@dataclass(frozen=True)
class PriorityPolicy:
    levels: int = DEFAULT_LEVELS
    default_level: int = DEFAULT_LEVEL
    promote_after_s: float = MAX_DEFAULT_PROMOTE_AFTER_S

    def level(self, priority: int) -> int:
        """The queue level of a checked priority; 0 is the default, and a number past this model's
        levels (a pipeline's, passed on to a step with fewer) is its lowest."""
        if priority <= 0:
            return self.default_level
        return min(priority, self.levels)


def priority_policy(model: ModelConfig) -> PriorityPolicy:
    promote_after_ms = model.priority_promote_after_ms
    if promote_after_ms is None:
        promote_after_s = min(model.request_timeout_ms / 2000, MAX_DEFAULT_PROMOTE_AFTER_S)
    else:
        promote_after_s = promote_after_ms / 1000
    return PriorityPolicy(model.priority_levels, model.default_priority_level, promote_after_s)


def header_priority(headers: Mapping[str, str], model: ModelConfig) -> int:
    """The X-Priority header's priority, checked against the model's levels; 0 where there is none."""
    value = headers.get(HEADER)
    return 0 if value is None else check_priority(value, "the X-Priority header", model)


def request_priority(parameters: Mapping[str, Any], model: ModelConfig, otherwise: int) -> int:
    """The v2 request's `parameters.priority` where it gives one, else `otherwise` (the header's)."""
    value = parameters.get(PARAMETER)
    return otherwise if value is None else check_priority(value, "parameters.priority", model)


def check_priority(value: object, where: str, model: ModelConfig) -> int:
    """`value` (an int, or an integer's text from a header) as a priority of `model`, or a 400."""
    number = _as_int(value)
    if number is None or not 0 <= number <= model.priority_levels:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise BadRequest(
            f"{where}: {shown} is not a priority of model {model.name!r}; give an integer from 1 (highest) "
            f"to {model.priority_levels} (lowest), or 0 for the model's default ({model.default_priority_level})"
        )
    return number


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS:
            return int(text)
    return None


def priority_problems(entry: dict[Any, Any], where: str) -> list[str]:
    """A model entry's priority settings that only make sense together, as written in the YAML."""
    levels = entry.get("priority_levels", DEFAULT_LEVELS)
    default = entry.get("default_priority_level", DEFAULT_LEVEL)
    promote_ms, timeout_ms = entry.get("priority_promote_after_ms"), entry.get("request_timeout_ms", 30_000.0)
    problems = []
    if _is_number(levels) and levels >= 1 and _is_number(default) and not 1 <= default <= levels:
        problems.append(
            f"{where}.default_priority_level: {default} is not one of the model's levels, "
            f"1 (highest) to {levels} (priority_levels)"
        )
    if _is_number(promote_ms) and _is_number(timeout_ms) and promote_ms >= timeout_ms:
        problems.append(
            f"{where}.priority_promote_after_ms: {promote_ms:g} must be below request_timeout_ms ({timeout_ms:g}), "
            "or a starving request would time out before it is promoted"
        )
    return problems


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
