"""Config of priorities and rate limits, and API keys' names: each problem names its YAML path,
the value and what is expected."""

from __future__ import annotations

import pytest

from inferd.auth import Access, load_named_keys
from inferd.config import parse_config
from inferd.errors import ConfigError
from inferd.key_names import name_keys


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    return caught.value.problems


def test_priority_settings_are_checked_together() -> None:
    found = problems(
        """
models:
  - {name: a, handler: "h.py:H", priority_levels: 3, default_priority_level: 4}
  - {name: b, handler: "h.py:H", request_timeout_ms: 500, priority_promote_after_ms: 500}
  - {name: c, handler: "h.py:H", priority_levels: 0, priority_promote_after_ms: -1}
"""
    )
    assert found[0] == (
        "models[0].default_priority_level: 4 is not one of the model's levels, 1 (highest) to 3 (priority_levels)"
    )
    assert found[1].startswith("models[1].priority_promote_after_ms: 500 must be below request_timeout_ms (500)")
    assert any(p.startswith("models[2].priority_levels:") and "(got 0)" in p for p in found)
    assert any(p.startswith("models[2].priority_promote_after_ms:") and "(got -1)" in p for p in found)
    assert len(found) == 4


def test_rate_limits_are_checked() -> None:
    found = problems(
        """
server: {key_rate_limits: {"bad name": {requests_per_s: 1}}}
models:
  - {name: a, handler: "h.py:H", rate_limit: {requests_per_s: 0, burst: 0, requests_per_sec: 1}}
"""
    )
    assert any(p.startswith("server.key_rate_limits:") and "'bad name' is not a key's name" in p for p in found)
    assert any(p.startswith("models[0].rate_limit.requests_per_s:") and "(got 0)" in p for p in found)
    assert any(p.startswith("models[0].rate_limit.burst:") and "(got 0)" in p for p in found)
    assert "models[0].rate_limit.requests_per_sec: unknown key; did you mean 'requests_per_s'?" in found


def test_key_limits_need_api_keys() -> None:
    found = problems(
        "server: {key_rate_limits: {tenant-a: {requests_per_s: 1}}}\nmodels: [{name: a, handler: 'h.py:H'}]"
    )
    assert len(found) == 1 and found[0].startswith("server: key_rate_limits are per API key")


def test_keys_are_named_by_their_entry_or_their_position() -> None:
    named = name_keys(["tenant-a:s3cret", "plain-key", "tenant-b: other"], "api_keys", "c.yaml")
    assert named == (("tenant-a", b"s3cret"), ("key-2", b"plain-key"), ("tenant-b", b"other"))


def test_two_keys_of_one_name_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        name_keys(["a:one", "a:two"], "api_keys", "c.yaml")
    assert caught.value.problems == ["server.auth.api_keys: two keys are named 'a'; give each key a name of its own"]


def test_access_names_the_key_a_request_presents(tmp_path, monkeypatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# tenants\ntenant-b: secret-b\nsecret-c\n")
    monkeypatch.setenv("INFERD_TEST_KEYS", "tenant-a:secret-a")
    config = parse_config(f"server: {{auth: {{api_keys_env: INFERD_TEST_KEYS, api_keys_file: {keys}}}}}\n"
                          "models: [{name: a, handler: 'h.py:H'}]")  # fmt: skip
    assert [name for name, _ in load_named_keys("INFERD_TEST_KEYS", keys, "api_keys", "c.yaml")] == [
        "tenant-a", "tenant-b", "key-3"
    ]  # fmt: skip
    access = Access.from_config(config.server, "c.yaml")
    assert access.key_name([(b"authorization", b"Bearer secret-b")]) == "tenant-b"
    assert access.key_name([(b"x-api-key", b"secret-c")]) == "key-3"
    assert access.key_name([(b"x-api-key", b"tenant-a:secret-a")]) is None  # the name is not part of the key
