"""Rate limits: a token bucket per API key (by the key's name, `server.key_rate_limits`) and one
per model (`models[].rate_limit`), checked on every inference front before the body is read.

A bucket holds at most `burst` tokens and gains `requests_per_s` of them a second; a request
takes one from each bucket it meets (its key's and its model's), or from none: a refused request
costs its caller nothing. An empty bucket refuses at once with 429, `Retry-After` (whole seconds
until a token is back, rounded up) and a message naming the limit. The OpenAI routes name their
model in the body, so there the key's bucket is met before the body is read and the model's after.

Buckets refill lazily from the time elapsed (`time.monotonic`, read once per check): no timers,
no threads, no locks, as every check runs on the one event loop. A reload that changes a model's
limit gives it a fresh, full bucket. Refusals count in `inferd_rate_limited_total{key, model,
limit}`: `key` is the key's name (never the key), "-" for none; `model` is "-" where it is not
known yet; `limit` says which bucket refused ("key" or "model").

pyrate-limiter (in the venv for schemathesis) was considered: its Limiter guards each bucket with
a threading lock and leaks its logs from a background thread or task, and its state algorithm
(GCRA) alone is a dozen lines; a bucket of our own keeps the request path free of both and the
package out of the daemon's dependencies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from inferd.config import ModelConfig, RateLimit
from inferd.errors import ConfigError, RequestError

NONE = "-"  # a label value no key or model name can take (names start with a letter or digit)
EVERY_KEY = "*"


class RateLimited(RequestError):
    status = 429


@dataclass
class TokenBucket:
    requests_per_s: float
    capacity: int
    tokens: float
    updated_s: float

    @classmethod
    def full(cls, limit: RateLimit, now_s: float) -> TokenBucket:
        return cls(limit.requests_per_s, limit.capacity, float(limit.capacity), now_s)

    def wait_s(self, now_s: float) -> float:
        """Seconds from `now_s` until a token is there: 0 when one is there now."""
        if now_s > self.updated_s:
            self.tokens = min(self.capacity, self.tokens + (now_s - self.updated_s) * self.requests_per_s)
            self.updated_s = now_s
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.requests_per_s

    def take(self) -> None:
        self.tokens -= 1


@dataclass(frozen=True)
class _Meeting:
    """One bucket a request meets, and how it is named in answers and series."""

    bucket: TokenBucket
    limit: RateLimit
    kind: str  # "key" or "model"
    name: str


class RateLimits:
    def __init__(
        self,
        key_limits: Mapping[str, RateLimit],
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key_limits = dict(key_limits)
        self._clock = clock
        self._keys: dict[str, TokenBucket] = {}
        self._models: dict[str, tuple[RateLimit, TokenBucket]] = {}
        self._refused = Counter(
            "inferd_rate_limited", "Requests refused with 429 by a rate limit, by API key name, model and limit.",
            ["key", "model", "limit"], registry=registry,
        )  # fmt: skip

    def check_key_names(self, names: tuple[str, ...], source: str) -> None:
        """A limit for a name no API key has is a mistake in the config (a typo, a key gone)."""
        unknown = [name for name in self._key_limits if name != EVERY_KEY and name not in names]
        if unknown:
            problems = [
                f"server.key_rate_limits.{name}: no API key is named {name!r} (the keys' names: {sorted(names)})"
                for name in unknown
            ]
            raise ConfigError(source, problems)

    def admit(self, key: str | None, model: ModelConfig | None, key_met_already: bool = False) -> None:
        """Take a token from the key's bucket and the model's, where they have one, or raise
        RateLimited naming the limit that has the longest wait."""
        if not self._key_limits and (model is None or model.rate_limit is None):
            return  # nothing is limited: the common case costs no clock read
        now_s = self._clock()
        meetings = [m for m in (None if key_met_already else self._key(key, now_s), self._model(model, now_s)) if m]
        if not meetings:
            return
        waits = [(meeting.bucket.wait_s(now_s), meeting) for meeting in meetings]
        wait_s, refusing = max(waits, key=lambda pair: pair[0])
        if wait_s > 0:
            self._refused.labels(key or NONE, model.name if model else NONE, refusing.kind).inc()
            raise _refusal(refusing, wait_s)
        for meeting in meetings:
            meeting.bucket.take()

    def _key(self, key: str | None, now_s: float) -> _Meeting | None:
        if key is None:
            return None
        limit = self._key_limits.get(key) or self._key_limits.get(EVERY_KEY)
        if limit is None:
            return None
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = self._keys[key] = TokenBucket.full(limit, now_s)
        return _Meeting(bucket, limit, "key", key)

    def _model(self, model: ModelConfig | None, now_s: float) -> _Meeting | None:
        if model is None or model.rate_limit is None:
            return None
        limit = model.rate_limit
        known = self._models.get(model.name)
        if known is None or known[0] != limit:  # new, or its limit changed with a reload
            known = self._models[model.name] = (limit, TokenBucket.full(limit, now_s))
        return _Meeting(known[1], limit, "model", model.name)


def _refusal(meeting: _Meeting, wait_s: float) -> RateLimited:
    retry_after_s = max(1, math.ceil(wait_s))
    who = f"API key {meeting.name!r}" if meeting.kind == "key" else f"model {meeting.name!r}"
    setting = "server.key_rate_limits" if meeting.kind == "key" else "rate_limit"
    limit = meeting.limit
    return RateLimited(
        f"{who} is over its rate limit ({limit.requests_per_s:g} requests/s, burst {limit.capacity}: "
        f"{setting}); retry in {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
        fields={"limit": meeting.kind},
    )
