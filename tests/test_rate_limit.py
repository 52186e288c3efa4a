"""Token buckets and the rate limits over them, alone: explicit times, then the real clock on a
real event loop."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from inferd.config import ModelConfig, RateLimit, parse_config
from inferd.errors import ConfigError
from inferd.rate_limit import RateLimited, RateLimits, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def model(limit: str = "") -> ModelConfig:
    return parse_config(f"models: [{{name: m, handler: 'h.py:H'{limit}}}]").models[0]


def refused(limits: RateLimits, key: str | None, config: ModelConfig | None) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limits.admit(key, config)
    return caught.value


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket.full(RateLimit(requests_per_s=2, burst=3), now_s=0.0)
    for _ in range(3):
        assert bucket.wait_s(0.0) == 0.0
        bucket.take()
    assert bucket.wait_s(0.0) == pytest.approx(0.5)
    assert bucket.wait_s(0.4) == pytest.approx(0.1)
    assert bucket.wait_s(0.5) == 0.0
    bucket.take()
    assert bucket.wait_s(100.0) == 0.0 and bucket.tokens == 3  # refills to the burst, never past it


def test_burst_defaults_to_the_rate_rounded_up() -> None:
    assert RateLimit(requests_per_s=2.5).capacity == 3
    assert RateLimit(requests_per_s=0.1).capacity == 1


def test_a_key_over_its_limit_gets_429_with_retry_after_rounded_up() -> None:
    clock = Clock()
    limits = RateLimits({"tenant-a": RateLimit(requests_per_s=0.4, burst=2)}, CollectorRegistry(), clock)
    limits.admit("tenant-a", None)
    limits.admit("tenant-a", None)
    error = refused(limits, "tenant-a", None)
    assert error.status == 429 and error.headers == {"Retry-After": "3"}  # 2.5 s until a token
    assert "API key 'tenant-a' is over its rate limit (0.4 requests/s, burst 2" in error.message
    assert error.fields == {"limit": "key"}
    clock.now_s += 2.5
    limits.admit("tenant-a", None)


def test_each_key_has_its_own_bucket_and_star_covers_the_unnamed() -> None:
    clock = Clock()
    every_key = {"*": RateLimit(requests_per_s=1, burst=1)}
    limits = RateLimits(every_key, CollectorRegistry(), clock)
    limits.admit("key-1", None)
    limits.admit("key-2", None)
    assert refused(limits, "key-1", None).headers == {"Retry-After": "1"}
    limits.admit(None, None)  # no key (no auth): no key bucket


def test_a_refusal_takes_from_no_bucket() -> None:
    clock = Clock()
    limits = RateLimits({"a": RateLimit(requests_per_s=1, burst=2)}, CollectorRegistry(), clock)
    limited = model(", rate_limit: {requests_per_s: 0.1, burst: 1}")
    limits.admit("a", limited)  # key 1 of 2 tokens, model 1 of 1
    error = refused(limits, "a", limited)
    assert "model 'm' is over its rate limit" in error.message and error.headers == {"Retry-After": "10"}
    limits.admit("a", None)  # the refusal left the key's second token in place
    assert "API key 'a'" in refused(limits, "a", None).message


def test_the_longer_wait_names_the_limit() -> None:
    clock = Clock()
    limits = RateLimits({"a": RateLimit(requests_per_s=0.01, burst=1)}, CollectorRegistry(), clock)
    limited = model(", rate_limit: {requests_per_s: 1, burst: 1}")
    limits.admit("a", limited)
    error = refused(limits, "a", limited)
    assert error.fields == {"limit": "key"} and error.headers == {"Retry-After": "100"}


def test_a_changed_model_limit_starts_a_full_bucket() -> None:
    limits = RateLimits({}, CollectorRegistry(), Clock())
    limits.admit(None, model(", rate_limit: {requests_per_s: 1, burst: 1}"))
    refused(limits, None, model(", rate_limit: {requests_per_s: 1, burst: 1}"))
    limits.admit(None, model(", rate_limit: {requests_per_s: 1, burst: 2}"))


def test_refusals_are_counted_by_key_name_model_and_limit() -> None:
    registry = CollectorRegistry()
    limits = RateLimits({"tenant-a": RateLimit(requests_per_s=1, burst=1)}, registry, Clock())
    limits.admit("tenant-a", model())
    refused(limits, "tenant-a", model())
    labels = {"key": "tenant-a", "model": "m", "limit": "key"}
    assert registry.get_sample_value("inferd_rate_limited_total", labels) == 1.0


def test_a_limit_for_a_name_no_key_has_is_a_config_error() -> None:
    limits = RateLimits({"tenant-x": RateLimit(requests_per_s=1), "*": RateLimit(requests_per_s=1)},
                        CollectorRegistry())  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        limits.check_key_names(("tenant-a", "key-2"), "c.yaml")
    assert caught.value.problems == [
        "server.key_rate_limits.tenant-x: no API key is named 'tenant-x' (the keys' names: ['key-2', 'tenant-a'])"
    ]


async def test_a_token_comes_back_on_the_real_clock() -> None:
    limits = RateLimits({"a": RateLimit(requests_per_s=20, burst=1)}, CollectorRegistry())
    limits.admit("a", None)
    assert refused(limits, "a", None).headers == {"Retry-After": "1"}
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        try:
            limits.admit("a", None)
            break
        except RateLimited:
            assert asyncio.get_running_loop().time() < deadline, "no token came back within 5 s"
            await asyncio.sleep(0.01)
