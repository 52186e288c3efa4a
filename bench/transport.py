"""A 4 MiB FP32 tensor into a row-sum model through each transport inferd serves, beside a loopback
socket echo of the same bytes as the floor; then a batch of 32 images into the EfficientNet-Lite0
example through each transport, against the network run in-process.

    python bench/transport.py [--mib 4] [--requests 40] [--images 32] [--image-requests 6] [--no-images]
                              [--keep-client-memory]

One client, sequential requests (so each figure is one request's cost), with Triton's own clients:
HTTP binary (`tritonclient.http`, binary tensor data), gRPC (`tritonclient.grpc`, raw contents), and
each with the input in a system shared-memory region the client registered
(`tritonclient.utils.shared_memory`). The floors: a socket on loopback, in another process, that
reads the 4 MiB and answers 4 bytes (what a row-sum round trip must move at least), and one that
echoes the 4 MiB back. Prints p50 and p90 in ms and each row's p50 over the echo's, with the
targets (HTTP binary and gRPC at most 3x the echo, shared memory at most 1.5x). The image rows give
rows/s (images per second) from the p50 of a 32-image request, over the same network called in a
loop in one process with as many torch threads as inferd's worker has (target: at least 0.8).

The row "gRPC, request serialized once" sends tritonclient's request as bytes built once: its gap
to the gRPC row is the client's own work. The row "gRPC client alone, no server" times that work
by itself (tritonclient building and serializing the request, as each `infer` call does): the gRPC
row can be no faster than it, whatever the server does. Most of that work is page faults: each call the clients
build their 4 MiB request in memory glibc has just taken from the kernel (about 3 ms a 4 MiB on a
2-core VM, against 0.1 ms to copy into memory already mapped). `--keep-client-memory` has this
process keep what it frees (mallopt: mmap threshold 32 MiB, trim threshold 256 MiB) to show the
rows without that cost; the server runs as always.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from big_tensor import build_model
from procs import ServerProcess, free_port

ECHO_SERVER = """
import socket, struct, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
connection, _ = listener.accept()
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buffer = bytearray(int(sys.argv[2]))
view = memoryview(buffer)
while True:
    header = connection.recv(5, socket.MSG_WAITALL)
    if len(header) < 5:
        break
    size, echo = struct.unpack("<IB", header)
    got = 0
    while got < size:
        got += connection.recv_into(view[got:size])
    connection.sendall(view[:size] if echo else b"done")
"""


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[max(int(len(ordered) * 0.9) - 1, 0)]


def timed(call: Callable[[], object], count: int) -> list[float]:
    for _ in range(3):  # warm the path
        call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def socket_floors(array: np.ndarray, count: int) -> dict[str, list[float]]:
    import struct

    port = free_port()
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port), str(array.nbytes)], stdout=subprocess.PIPE)
    assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
    payload = array.tobytes()
    reply = bytearray(array.nbytes)
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def exchange(echo_back: bool) -> None:
            connection.sendall(struct.pack("<IB", len(payload), echo_back))
            connection.sendall(payload)
            wanted = len(payload) if echo_back else 4
            view, got = memoryview(reply), 0
            while got < wanted:
                got += connection.recv_into(view[got:wanted])

        floors = {
            "socket: 4 MiB in, 4 B back": timed(lambda: exchange(False), count),
            "socket: 4 MiB echoed": timed(lambda: exchange(True), count),
        }
    echo.wait(10)
    return floors


def inferd_rows(array: np.ndarray, count: int, http_url: str, grpc_url: str) -> dict[str, list[float]]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    http = httpclient.InferenceServerClient(http_url, connection_timeout=120, network_timeout=120)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    expected = float(array.sum())
    region = shm.create_shared_memory_region("bench-in", "/inferd-bench-in", array.nbytes)
    shm.set_shared_memory_region(region, [array])
    rows: dict[str, list[float]] = {}
    try:
        for name, client, module in (("HTTP", http, httpclient), ("gRPC", grpc, grpcclient)):
            raw = module.InferInput("input", list(array.shape), "FP32")
            if module is httpclient:
                raw.set_data_from_numpy(array, binary_data=True)
            else:
                raw.set_data_from_numpy(array)
            outputs = [module.InferRequestedOutput("output", **({"binary_data": True} if module is httpclient else {}))]
            check(client.infer("rowsum", [raw], outputs=outputs), expected)
            rows[f"{name} binary" if module is httpclient else name] = timed(
                lambda c=client, i=raw, o=outputs: c.infer("rowsum", [i], outputs=o), count
            )
            client.register_system_shared_memory("bench-in", "/inferd-bench-in", array.nbytes)
            in_region = module.InferInput("input", list(array.shape), "FP32")
            in_region.set_shared_memory("bench-in", array.nbytes)
            check(client.infer("rowsum", [in_region], outputs=outputs), expected)
            rows[f"{name} + system shm"] = timed(
                lambda c=client, i=in_region, o=outputs: c.infer("rowsum", [i], outputs=o), count
            )
            client.unregister_system_shared_memory("bench-in")
        rows["gRPC, request serialized once"] = pre_serialized(array, grpc_url, count)
        rows["gRPC client alone, no server"] = client_alone(array, count)
    finally:
        shm.destroy_shared_memory_region(region)
        http.close()
        grpc.close()
    return rows


def pre_serialized(array: np.ndarray, grpc_url: str, count: int) -> list[float]:
    """The gRPC row without the client's protobuf work: the same ModelInferRequest, serialized once,
    sent as bytes on a plain grpcio channel. Its gap to the gRPC row is tritonclient's own cost
    (building and serializing 4 MiB into fresh memory each call), not the server's."""
    import grpc
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="rowsum", raw_input_contents=[array.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(array.shape))
    request.outputs.add(name="output")
    data = request.SerializeToString()
    channel = grpc.insecure_channel(grpc_url, options=[("grpc.max_send_message_length", -1)])
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    answer = service_pb2.ModelInferResponse.FromString(call(data))
    got = float(np.frombuffer(answer.raw_output_contents[0], np.float32)[0])
    if abs(got - float(array.sum())) > 1e-3 * abs(float(array.sum())):
        raise SystemExit(f"wrong answer {got} over the pre-serialized call")
    try:
        return timed(lambda: call(data), count)
    finally:
        channel.close()


def client_alone(array: np.ndarray, count: int) -> list[float]:
    """What tritonclient.grpc does for each infer call before a byte leaves the process: build the
    ModelInferRequest from the InferInput (a copy of the 4 MiB) and serialize it (another). No
    server beats the echo by more than this row: it bounds the gRPC row from below."""
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request

    raw = grpcclient.InferInput("input", list(array.shape), "FP32")
    raw.set_data_from_numpy(array)
    outputs = [grpcclient.InferRequestedOutput("output")]

    def build_and_serialize() -> bytes:
        request = _get_inference_request(
            model_name="rowsum", inputs=[raw], model_version="", request_id="", outputs=outputs, sequence_id=0,
            sequence_start=False, sequence_end=False, priority=0, timeout=None, parameters=None,
        )  # fmt: skip
        return bytes(request.SerializeToString())

    return timed(build_and_serialize, count)


def keep_client_memory() -> None:
    """glibc keeps freed blocks up to 32 MiB in its heap and never trims below 256 MiB free."""
    import ctypes

    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 256 << 20)):
        raise SystemExit("mallopt refused the thresholds (not glibc?)")


def check(result: object, expected: float) -> None:
    answer = float(result.as_numpy("output").ravel()[0])  # type: ignore[attr-defined]
    if abs(answer - expected) > 1e-3 * abs(expected):
        raise SystemExit(f"wrong answer {answer} (numpy says {expected})")


TARGETS = {"HTTP binary": 3.0, "gRPC": 3.0, "HTTP + system shm": 1.5, "gRPC + system shm": 1.5}


def print_tensor_rows(rows: dict[str, list[float]], array: np.ndarray, requests: int) -> None:
    echo, _ = percentiles(rows["socket: 4 MiB echoed"])
    print(f"one FP32 row of {array.size:,} floats ({array.nbytes / 2**20:.1f} MiB), {requests} sequential requests")
    print(f"{'path':<28} {'p50 ms':>8} {'p90 ms':>8} {'p50 / echo':>11} {'target':>8}")
    for name, times in rows.items():
        p50, p90 = percentiles(times)
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:g}x {'met' if p50 / echo <= target else 'MISSED'}"
        print(f"{name:<28} {p50 * 1000:8.2f} {p90 * 1000:8.2f} {p50 / echo:10.2f}x {verdict}")


def tensor_rows(folder: Path, array: np.ndarray, requests: int) -> dict[str, list[float]]:
    port, grpc_port = free_port(), free_port()
    config = folder / "transport.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, grpc_port: {grpc_port}, log_level: warning, "
        "max_request_bytes: 268435456}\n"
        f"models:\n  - {{name: rowsum, path: {build_model(folder)}, inputs: [{{name: input, shape: [-1, {array.size}]}}]}}\n"
    )
    argv = [sys.executable, "-m", "inferd", "serve", str(config)]
    with ServerProcess(argv, f"http://127.0.0.1:{port}/readyz", folder / "inferd.log"):
        rows = socket_floors(array, requests)
        rows.update(inferd_rows(array, requests, f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--image-requests", type=int, default=6)
    parser.add_argument("--no-images", action="store_true", help="only the 4 MiB rows")
    parser.add_argument(
        "--keep-client-memory", action="store_true", help="the clients reuse freed memory instead of fresh pages"
    )
    args = parser.parse_args()
    if args.keep_client_memory:
        keep_client_memory()
    floats = int(args.mib * 1024 * 1024 / 4)
    array = np.random.default_rng(0).random((1, floats), dtype=np.float32)
    folder = Path(tempfile.mkdtemp(prefix="inferd-transport-"))
    kept = ", clients keep freed memory" if args.keep_client_memory else ""
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs{kept}")
    print_tensor_rows(tensor_rows(folder, array, args.requests), array, args.requests)
    if not args.no_images:
        from transport_images import image_rows

        image_rows(folder, args.images, args.image_requests)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
