"""Traffic splits against a real server: observed shares over 2,000 requests within 3 points of
the weights, stickiness by key header, the variant named in X-Inferd-Variant (and it really is the
variant that computed the answer), per-variant series, and shadow copies whose answers are
discarded, whose latency and errors are recorded, and which are dropped when the candidate is
saturated while every primary request is answered."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, free_port, start_server, wait_until

from .traffic import VARIANT, sample, send_many, shares

CONFIG = """
server: {host: 127.0.0.1, grpc_port: GRPC_PORT, drain_timeout_s: 10}
models:
  - name: echo
    max_batch_size: 8
    versions:
      - {version: 1, handler: "{HANDLERS}:Echo", handler_args: {tag: echo-v1}}
      - {version: 2, handler: "{HANDLERS}:Echo", handler_args: {tag: echo-v2}}
  - {name: other, handler: "{HANDLERS}:Echo", max_batch_size: 8, handler_args: {tag: other}}
  - name: ab
    max_batch_size: 8
    split:
      key_header: X-User
      variants:
        - {model: echo, version: 1, weight: 70}
        - {model: other, weight: 30}
        - {model: echo, version: 2, weight: 0}
      shadow: {model: echo, version: 2, share: 0.25}
"""
TAGS = {"echo@1": "echo-v1", "other": "other", "echo@2": "echo-v2"}
REQUESTS = 2000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    grpc_port = free_port()
    running = start_server(tmp_path_factory.mktemp("splits"), CONFIG.replace("GRPC_PORT", str(grpc_port)))
    running.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield running
    assert running.stop() == 0
    assert_clean_log(running.log())


def test_shares_over_2000_requests_are_within_3_points_of_the_weights(server: RunningServer) -> None:
    answers = send_many(server, "/models/ab/predict", REQUESTS)

    assert {answer.status for answer in answers} == {200}
    observed = shares(answers)
    assert abs(observed["echo@1"] - 0.70) <= 0.03, observed
    assert abs(observed["other"] - 0.30) <= 0.03, observed
    assert "echo@2" not in observed  # weight 0: never answers, though it gets shadow copies
    assert all(TAGS[str(answer.variant)] == answer.tag for answer in answers)  # the header names who computed it


def test_keyed_shares_over_2000_clients_are_within_3_points_too(server: RunningServer) -> None:
    answers = send_many(server, "/models/ab/predict", REQUESTS, headers=lambda n: {"X-User": f"user-{n}"})

    observed = shares(answers)
    assert abs(observed["echo@1"] - 0.70) <= 0.03, observed
    assert abs(observed["other"] - 0.30) <= 0.03, observed


def test_the_same_key_always_lands_on_the_same_variant(server: RunningServer) -> None:
    keys = 100
    answers = send_many(server, "/models/ab/predict", keys * 5, headers=lambda n: {"X-User": f"client-{n % keys}"})

    variants_by_key: dict[int, set[str | None]] = defaultdict(set)
    for n, answer in enumerate(answers):
        variants_by_key[n % keys].add(answer.variant)
    assert all(len(variants) == 1 for variants in variants_by_key.values()), variants_by_key
    assert {v for variants in variants_by_key.values() for v in variants} == {"echo@1", "other"}


def test_every_route_form_names_the_variant(server: RunningServer) -> None:
    body = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    with server.client() as client:
        answer = client.post("/v2/models/ab/infer", json=body, headers={"X-User": "someone"})
        again = client.post("/v2/models/ab/infer", json=body, headers={"X-User": "someone"})
    assert answer.status_code == 200, answer.text
    assert answer.headers[VARIANT] in ("echo@1", "other")
    assert again.headers[VARIANT] == answer.headers[VARIANT]
    assert server.get("/v2/models/ab/ready").json()["ready"] is True
    assert VARIANT not in server.post("/models/other/predict", {"inputs": ["x"]}).headers  # not a split


def test_grpc_calls_are_sticky_and_name_the_variant_in_trailing_metadata(server: RunningServer) -> None:
    import grpc

    from inferd.protocols.grpc_pb import grpc_service_pb2 as pb
    from inferd.protocols.grpc_pb import grpc_service_pb2_grpc as pb_grpc

    contents = pb.InferTensorContents(bytes_contents=[b"x"])
    request = pb.ModelInferRequest(
        model_name="ab",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="BYTES", shape=[1], contents=contents)],
    )
    with grpc.insecure_channel(server.grpc_url) as channel:  # type: ignore[attr-defined]
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        variants = set()
        for _ in range(5):
            response, call = stub.ModelInfer.with_call(request, metadata=(("x-user", "grpc-client"),))
            assert response.model_name == "ab"
            variants.add(dict(call.trailing_metadata())["x-inferd-variant"])
        request.model_name, request.model_version = "echo", "1"
        assert stub.ModelInfer(request).model_version == "1"
    assert len(variants) == 1 and variants <= {"echo@1", "other"}


def test_per_variant_series_count_every_request(server: RunningServer) -> None:
    before = {v: sample(server, "inferd_split_requests_total", split="ab", variant=v, code="200") for v in TAGS}
    answers = send_many(server, "/models/ab/predict", 100)

    after = {v: sample(server, "inferd_split_requests_total", split="ab", variant=v, code="200") for v in TAGS}
    counted = {v: after[v] - before[v] for v in TAGS}
    assert counted == {v: float(sum(a.variant == v for a in answers)) for v in TAGS}
    assert sample(server, "inferd_split_weight", split="ab", variant="echo@1") == 70
    assert sample(server, "inferd_split_weight", split="ab", variant="echo@2") == 0


def test_shadow_copies_are_answered_into_the_void_and_recorded(server: RunningServer) -> None:
    def shadow(outcome: str) -> float:
        return sample(server, "inferd_shadow_requests_total", split="ab", variant="echo@2", outcome=outcome)

    ok_before, dropped_before = shadow("ok"), shadow("dropped")
    computed_before = sample(server, "inferd_batch_size_sum", model="echo@2")
    answers = send_many(server, "/models/ab/predict", 400)

    assert all(answer.variant != "echo@2" and answer.tag != "echo-v2" for answer in answers)
    wait_until(lambda: shadow("ok") + shadow("dropped") - ok_before - dropped_before == 100, 30, "every 4th copied")
    copies = shadow("ok") - ok_before
    assert copies > 0 and shadow("error") == 0
    assert sample(server, "inferd_batch_size_sum", model="echo@2") - computed_before == copies  # each computed
    assert sample(server, "inferd_shadow_duration_seconds_count", split="ab", variant="echo@2") == shadow("ok")
