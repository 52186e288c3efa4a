"""Big tensors between inferd's main process and its workers through shared memory, against a real
inferd with Triton's clients: a 4 MiB round trip answers exactly what the socket path answers, an
input in a client's region reaches the worker with none of its bytes on the channel's socket (the
main process counts what crosses, by path, in inferd_channel_bytes_total), a region removed after
it was registered fails that request alone, a worker SIGKILLed while holding a batch in a segment
leaves nothing of its own in /dev/shm and the batch is answered by another, and stop leaves
nothing at all (while serving, each live worker's channel keeps a small pool).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.logs import assert_clean_log
from tests.conftest import RunningServer, free_port, start_server, wait_until

grpcclient = pytest.importorskip("tritonclient.grpc")
import tritonclient.http as httpclient  # noqa: E402
import tritonclient.utils.shared_memory as shm  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

WIDTH = 16_384  # one row is 64 KiB: under the segment threshold; 64 rows are 4 MiB, over it
ROWS = np.random.default_rng(7).standard_normal((64, WIDTH), dtype=np.float32)
AFFINE = """
import sys, torch

class Affine(torch.nn.Module):
    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows * 3.0 - 1.0

torch.jit.script(Affine()).save(sys.argv[1])
"""
ChannelBytes = dict[tuple[str, str], float]


def segments_of(main_pid: int, worker_pid: int | None = None) -> list[str]:
    prefix = f"inferd-seg-{main_pid}-" + ("" if worker_pid is None else f"{worker_pid}-")
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("worker-shm")
    script = folder / "affine.py"  # TorchScript reads the module's source from its file
    script.write_text(AFFINE)
    subprocess.run([sys.executable, str(script), str(folder / "affine.pt")], check=True)
    stale = Path(f"/dev/shm/inferd-seg-{dead_pid()}-1-m0")  # as an inferd SIGKILLed mid-batch leaves it
    stale.write_bytes(b"left over")
    grpc_port = free_port()
    config = f"""
server: {{host: 127.0.0.1, grpc_port: {grpc_port}, drain_timeout_s: 10}}
models:
  - name: affine
    path: {folder}/affine.pt
    max_batch_size: 64
    workers_per_device: 2
    inputs: [{{name: input, datatype: FP32, shape: [-1, {WIDTH}]}}]
    outputs: [{{name: output, datatype: FP32, shape: [-1, {WIDTH}]}}]
"""
    running = start_server(folder, config)
    running.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    running.stale_segment = stale  # type: ignore[attr-defined]
    yield running
    main_pid = running.process.pid
    assert running.stop() == 0, running.log()
    assert segments_of(main_pid) == [], "inferd left segments in /dev/shm after stop"
    assert_clean_log(running.log())


def channel_bytes(server: RunningServer) -> ChannelBytes:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    counted: ChannelBytes = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inferd_channel_bytes_total":
                key = (sample.labels["direction"], sample.labels["path"])
                counted[key] = counted.get(key, 0.0) + sample.value
    return counted


def grown(before: ChannelBytes, after: ChannelBytes, direction: str, path: str) -> float:
    return after.get((direction, path), 0.0) - before.get((direction, path), 0.0)


def http_infer(client: httpclient.InferenceServerClient, rows: np.ndarray) -> np.ndarray:
    given = httpclient.InferInput("input", list(rows.shape), "FP32")
    given.set_data_from_numpy(rows, binary_data=True)
    wanted = httpclient.InferRequestedOutput("output", binary_data=True)
    return client.infer("affine", [given], outputs=[wanted]).as_numpy("output")


def assert_only_pools_of_live_workers(server: RunningServer, most_per_worker: int = 4) -> None:
    """While serving, each worker's channel keeps a few segments per size for the next batches
    (sequential requests of one size: one each way in use and one free)."""
    main_pid, workers = server.process.pid, server.worker_pids("affine")
    pooled = segments_of(main_pid)
    assert len(pooled) <= most_per_worker * len(workers), pooled
    assert all(int(name.split("-")[3]) in workers for name in pooled), (pooled, workers)


def test_start_sweeps_what_a_dead_inferd_left(server: RunningServer) -> None:
    assert not server.stale_segment.exists()  # type: ignore[attr-defined]


def test_a_big_tensor_in_segments_answers_what_the_socket_path_answers(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    before = channel_bytes(server)
    big = http_infer(client, ROWS)
    after_big = channel_bytes(server)
    assert grown(before, after_big, "to_worker", "segment") == ROWS.nbytes
    assert grown(before, after_big, "from_worker", "segment") == ROWS.nbytes
    assert grown(before, after_big, "to_worker", "socket") < 64 * 1024  # descriptors only
    one_row_at_a_time = np.concatenate([http_infer(client, ROWS[i : i + 1]) for i in range(len(ROWS))])
    after_small = channel_bytes(server)
    assert grown(after_big, after_small, "to_worker", "segment") == 0  # 64 KiB rows: on the socket
    assert grown(after_big, after_small, "to_worker", "socket") >= ROWS.nbytes
    assert np.array_equal(big, one_row_at_a_time)
    np.testing.assert_allclose(big, ROWS * 3 - 1, rtol=1e-6)
    assert_only_pools_of_live_workers(server)
    client.close()


@pytest.fixture
def region() -> Iterator[tuple[str, str, object]]:
    tag = uuid.uuid4().hex[:8]
    handle = shm.create_shared_memory_region(f"rows-{tag}", f"/inferd-test-rows-{tag}", ROWS.nbytes)
    shm.set_shared_memory_region(handle, [ROWS])
    yield f"rows-{tag}", f"/inferd-test-rows-{tag}", handle
    shm.destroy_shared_memory_region(handle)


def test_an_input_in_a_client_region_reaches_the_worker_without_crossing_the_socket(
    server: RunningServer, region: tuple[str, str, object]
) -> None:
    name, key, _ = region
    grpc = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    grpc.register_system_shared_memory(name, key, ROWS.nbytes)
    for module, client in ((grpcclient, grpc), (httpclient, http)):
        given = module.InferInput("input", list(ROWS.shape), "FP32")
        given.set_shared_memory(name, ROWS.nbytes)
        before = channel_bytes(server)
        answer = client.infer("affine", [given]).as_numpy("output")
        after = channel_bytes(server)
        np.testing.assert_allclose(answer, ROWS * 3 - 1, rtol=1e-6)
        assert grown(before, after, "to_worker", "client_region") == ROWS.nbytes, module.__name__
        assert grown(before, after, "to_worker", "segment") == 0, module.__name__
        assert grown(before, after, "to_worker", "socket") < 64 * 1024, module.__name__
    grpc.unregister_system_shared_memory(name)
    grpc.close()
    http.close()


def test_a_region_removed_after_it_was_registered_fails_that_request_alone(server: RunningServer) -> None:
    tag = uuid.uuid4().hex[:8]
    handle = shm.create_shared_memory_region(f"gone-{tag}", f"/inferd-test-gone-{tag}", ROWS.nbytes)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    grpc.register_system_shared_memory(f"gone-{tag}", f"/inferd-test-gone-{tag}", ROWS.nbytes)
    shm.destroy_shared_memory_region(handle)  # unlinked: inferd's own mapping still passes the checks
    given = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
    given.set_shared_memory(f"gone-{tag}", ROWS.nbytes)
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer("affine", [given])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert "could not be read" in caught.value.message()
    grpc.unregister_system_shared_memory()
    plain = grpcclient.InferInput("input", [1, WIDTH], "FP32")
    plain.set_data_from_numpy(ROWS[:1])
    np.testing.assert_allclose(grpc.infer("affine", [plain]).as_numpy("output"), ROWS[:1] * 3 - 1, rtol=1e-6)
    grpc.close()


def test_a_worker_killed_holding_a_segment_leaves_nothing_and_the_batch_is_answered(server: RunningServer) -> None:
    main_pid, workers = server.process.pid, server.worker_pids("affine")
    assert len(workers) == 2
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    answers: list[np.ndarray] = []
    for pid in workers:  # stopped, neither can take its segment before it is killed
        os.kill(pid, signal.SIGSTOP)
    try:
        call = threading.Thread(target=lambda: answers.append(http_infer(client, ROWS)))
        call.start()

        def holder() -> int | None:
            busy = [w["pid"] for w in server.models()["affine"]["workers"] if w["busy"]]
            return busy[0] if busy else None

        wait_until(lambda: holder() is not None, 30, "a worker to be sent the batch")
        busy = holder()
        assert busy is not None and segments_of(main_pid, busy), "the batch was not sent in a segment"
        os.kill(busy, signal.SIGKILL)
        for pid in workers:
            if pid != busy:
                os.kill(pid, signal.SIGCONT)
        call.join(60)
        assert answers, "the call did not return"
        np.testing.assert_allclose(answers[0], ROWS * 3 - 1, rtol=1e-6)
        assert "retrying its 1 request(s) once" in server.log()
        assert segments_of(main_pid, busy) == [], "the dead worker's segment is still in /dev/shm"
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        client.close()
    server.wait_ready()
    assert_only_pools_of_live_workers(server)


def test_concurrent_big_requests_each_get_their_own_answer(server: RunningServer) -> None:
    """Several requests share a batch (a segment each) and batches overlap on both workers: every
    answer is its own request's, and the pools stay small."""
    from concurrent.futures import ThreadPoolExecutor

    def one(k: int) -> bool:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
        try:
            rows = ROWS[:16] + k  # 1 MiB each, distinct per request
            return bool(np.allclose(http_infer(client, rows), rows * 3 - 1, rtol=1e-6))
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(32)))
    assert all(answers), answers.count(False)
    # Per size and direction: two kept, plus those of the batch running and of the one before it
    # (a segment returns with the next message), each of up to four requests.
    assert_only_pools_of_live_workers(server, most_per_worker=2 * 2 * (2 + 2 * 4))
