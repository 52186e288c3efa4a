"""The byte accountant on its own: shares, the total, 429 against 413, and release exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.admission import Admission, body_bound_bytes, payload_bytes
from inferd.errors import PayloadTooLarge, QueueFull


def test_a_model_is_refused_past_its_share_and_the_server_past_the_total() -> None:
    admission = Admission(100)
    a, b = admission.hold("a", 0.5), admission.hold("b", 0.8)
    a.grow(50)
    with pytest.raises(QueueFull, match="request_bytes_fraction"):
        admission.hold("a", 0.5).grow(1)
    b.grow(50)
    with pytest.raises(QueueFull, match="max_request_bytes_held") as refused:
        admission.hold("b", 0.8).grow(1)
    assert refused.value.headers == {"Retry-After": "1"}
    assert (admission.held_bytes, admission.held_by_model) == (100, {"a": 50, "b": 50})


def test_a_request_that_could_never_fit_is_413_not_429() -> None:
    admission = Admission(100)
    with pytest.raises(PayloadTooLarge, match="may hold at most 50"):
        admission.hold("a", 0.5).grow(51)
    assert admission.held_bytes == 0


def test_resize_and_release_give_back_everything_once() -> None:
    admission = Admission(100)
    with admission.hold("a", 1.0) as held:
        held.grow(60)
        held.resize(20)
        assert admission.held_bytes == 20
        held.resize(90)
        held.release()
    assert (admission.held_bytes, admission.held_by_model) == (0, {"a": 0})


def test_views_into_the_body_count_it_once_and_fresh_arrays_by_size() -> None:
    body = bytes(1000)
    views = [np.frombuffer(body, np.float32, 10), np.frombuffer(body, np.uint8, 8, offset=100)]
    fresh = np.zeros(5, np.float64)
    assert payload_bytes([*views, fresh], body) == 1000 + 40
    assert payload_bytes([np.array([b"ab", b""], dtype=object)], body) == 2 + 2 * 48


def test_declared_inputs_bound_the_body_unless_a_dim_varies() -> None:
    class Spec:
        def __init__(self, datatype: str, shape: tuple[int, ...]) -> None:
            self.name, self.datatype, self.shape = "x", datatype, shape

    assert body_bound_bytes(32, [Spec("FP32", (-1, 16))]) == 64 * 1024 + 64 * 32 * 16
    assert body_bound_bytes(32, [Spec("FP32", (-1, -1))]) is None
    assert body_bound_bytes(32, [Spec("BYTES", (-1,))]) is None
    assert body_bound_bytes(32, []) is None


def test_a_budget_smaller_than_one_body_is_a_config_error() -> None:
    from inferd.config import parse_config
    from inferd.errors import ConfigError

    text = "server: {max_request_bytes: 2000, max_request_bytes_held: 1000}\nmodels: [{name: m, handler: 'x.py:H'}]"
    with pytest.raises(ConfigError, match="max_request_bytes_held \\(1000\\) must be at least max_request_bytes"):
        parse_config(text)
