"""Checks 1, 2, 6 and 7 on one server: four models on one GPU.

tiny_cuda (`device: cuda`, two workers), where (answers whether its tensors are on CUDA), probe
(answers torch's memory figures read in its worker) and copies (counts the copies of a profiled
TensorRunner batch) all share GPU 0.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpu import nvsmi
from gpu.context import Context
from gpu.loadgen import Load
from gpu.report import Row, guarded, verdict
from gpu.serving import InferdServer, handler, sample, wait_until

SERVER = "placement"
ROW16 = [0.25] * 16
TENSOR16 = [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
GPU_MODELS = ("tiny_cuda", "where", "probe", "copies")
ROWS_1_2 = [
    ("1a", "workers of device: cuda on the GPU", "every worker pid on GPU 0 in nvidia-smi; series on cuda:0"),
    ("1b", "a cuda model's tensors on the GPU", "input and weight is_cuda = 1 in the worker"),
    ("1c", "host-to-device copies per batch", "1 H2D (and 1 D2H) per batch of several requests"),
    ("1d", "two models sharing one GPU", "all interleaved answers 200 and right; both on cuda:0"),
    ("2a", "per-model GPU memory series", "== memory_allocated/reserved read in the worker"),
    ("2b", "per-device used/total vs nvidia-smi", "within 1% of nvidia-smi"),
]
ROWS_6_7 = [
    ("6", "CUDA worker SIGKILLed under load", "replaced; its GPU memory freed; 0 requests lost"),
    ("7", "fork helper never initialises CUDA", "forkserver has no CUDA context; worker forked after 30 s works"),
]


def models(ctx: Context) -> list[dict[str, Any]]:
    tiny, where = ctx.files["tiny"], ctx.files["where"]
    return [
        {
            "name": "tiny_cuda",
            "path": tiny,
            "device": ctx.device(plain=True),
            "workers_per_device": 2,
            "max_batch_size": 32,
            "batch_timeout_ms": 1,
            "inputs": TENSOR16,
        },
        {"name": "where", "path": where, "device": ctx.device(plain=True), "max_batch_size": 8, "inputs": TENSOR16},
        {"name": "probe", "handler": handler("MemoryProbe"), "device": ctx.device(), "handler_args": {"hold_mib": 96}},
        {
            "name": "copies",
            "handler": handler("CopyCounter"),
            "device": ctx.device(),
            "max_batch_size": 16,
            "batch_timeout_ms": 30,
            "handler_args": {"model_path": tiny},
        },
    ]


def server(ctx: Context) -> InferdServer:
    running = ctx.servers.get(SERVER)
    if running is not None and running.running():
        return running
    return ctx.start(SERVER, models(ctx))


def placement_and_memory(ctx: Context) -> list[Row]:
    if not ctx.runs_gpu_checks:
        return ctx.skip_rows(ROWS_1_2)
    inferd = server(ctx)
    checks = (workers_on_gpu, tensors_on_gpu, copies_per_batch, sharing, memory_series, device_memory)
    return [guarded(spec, lambda c=c: c(ctx, inferd)) for spec, c in zip(ROWS_1_2, checks)]


def worker_kill_and_fork(ctx: Context) -> list[Row]:
    if not ctx.runs_gpu_checks:
        return ctx.skip_rows(ROWS_6_7)
    inferd = server(ctx)
    try:
        return [
            guarded(spec, lambda c=c: c(ctx, inferd))
            for spec, c in zip(ROWS_6_7, (killed_under_load, fork_after_serving))
        ]
    finally:
        ctx.stop(SERVER)


def _gpu_series(inferd: InferdServer) -> dict[tuple[str, str], tuple[str, float]]:
    """(model, worker) -> (device label, allocated bytes) from /metrics."""
    series = inferd.metrics().get("inferd_gpu_memory_allocated_bytes", [])
    return {(labels["model"], labels["worker"]): (labels["device"], value) for labels, value in series}


def workers_on_gpu(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_1_2[0]
    pids = {(model, slot): pid for model in GPU_MODELS for slot, pid in inferd.worker_pids(model).items()}
    try:
        wait_until(lambda: set(_gpu_series(inferd)) >= set(pids) or not ctx.cuda, 10, "a GPU series per worker")
    except TimeoutError:
        pass  # the figure below counts the series that are missing
    series, apps = _gpu_series(inferd), nvsmi.processes()
    on_cuda0 = sum(1 for key in pids if series.get(key, ("",))[0] == "cuda:0")
    figure = f"{len(pids)} workers of {len(GPU_MODELS)} models; series on cuda:0 for {on_cuda0}/{len(pids)}"
    if apps:
        listed = sum(1 for pid in pids.values() if pid in apps)
        figure += f"; {listed}/{len(pids)} pids in nvidia-smi's process list"
        ok = listed == len(pids) and on_cuda0 == len(pids)
        note = "" if listed else f"nvidia-smi lists pids {sorted(apps)[:8]}, none of inferd's: another pid namespace?"
    else:
        ok = on_cuda0 == len(pids)
        note = "nvidia-smi lists no processes here: judged by the series alone" if apps == {} else "no nvidia-smi"
    if not ctx.cuda:
        wanted = sum(m.get("workers_per_device", 1) for m in models(ctx))
        return Row(
            check,
            name,
            f"{len(pids)}/{wanted} workers ready on cpu",
            expected,
            verdict(len(pids) == wanted),
            ctx.note(),
        )
    return Row(check, name, figure, expected, verdict(ok), note)


def tensors_on_gpu(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_1_2[1]
    answer = inferd.predict("where", [ROW16, ROW16, ROW16])
    rows = answer.json().get("outputs") if answer.status_code == 200 else None
    figure = f"HTTP {answer.status_code}; is_cuda(input, weight) per row = {rows}"
    wanted = [[1.0, 1.0]] * 3 if ctx.cuda else [[0.0, 0.0]] * 3
    return Row(check, name, figure, expected, verdict(rows == wanted), ctx.note())


def copies_per_batch(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_1_2[2]
    bodies = [[ROW16] * (1 + i % 2) for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda rows: inferd.predict("copies", rows), bodies))
    batches = {tuple(sorted(out.items())) for a in answers if a.status_code == 200 for out in a.json()["outputs"]}
    figures = [dict(batch) for batch in batches]
    failed = sum(1 for a in answers if a.status_code != 200)
    problems = [f["problem"] for f in figures if "problem" in f]
    if problems:
        return Row(check, name, "the profiler did not run in the worker", expected, "FAIL", problems[0][-500:])
    h2d = sorted({f["h2d"] for f in figures})
    d2h = sorted({f["d2h"] for f in figures})
    largest = max((f["payloads"] for f in figures), default=0)
    cuda_seen = any(f["cuda_events"] for f in figures)
    figure = (
        f"{len(figures)} kinds of batch, up to {largest} payloads each: H2D per batch {h2d}, D2H {d2h}, "
        f"aten::to per batch {sorted({f['to_device_calls'] for f in figures})}; {failed} failed"
    )
    if not ctx.cuda:
        return Row(check, name, figure, expected, verdict(failed == 0 and largest >= 2), ctx.note())
    note = "profiled in the worker around inferd.runners.TensorRunner.run_batch (torch.profiler, CUPTI)"
    if not cuda_seen:
        return Row(check, name, figure, expected, "FAIL", note + "; the profiler recorded no CUDA activity")
    ok = failed == 0 and largest >= 2 and h2d == [1] and d2h == [1]
    return Row(check, name, figure, expected, verdict(ok), note)


def sharing(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_1_2[3]
    calls = [("tiny_cuda" if i % 2 else "where") for i in range(120)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda model: (model, inferd.predict(model, [ROW16])), calls))
    flag = 1.0 if ctx.cuda else 0.0

    def right(model: str, answer: Any) -> bool:
        if answer.status_code != 200:
            return False
        out = answer.json()["outputs"]
        return len(out[0]) == 16 if model == "tiny_cuda" else out == [[flag, flag]]

    good = sum(1 for model, answer in answers if right(model, answer))
    devices = sorted(
        {device for (model, _), (device, _) in _gpu_series(inferd).items() if model in ("tiny_cuda", "where")}
    )
    figure = f"{good}/{len(answers)} interleaved answers right (tiny_cuda x2 workers, where); devices {devices}"
    ok = good == len(answers) and (devices == ["cuda:0"] or not ctx.cuda)
    return Row(check, name, figure, expected, verdict(ok), ctx.note())


def memory_series(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_1_2[4]
    if not ctx.cuda:
        answer = inferd.predict("probe", ["read"])
        return Row(
            check, name, f"probe HTTP {answer.status_code}", expected, verdict(answer.status_code == 200), ctx.note()
        )
    for _ in range(3):  # a stats message read before the probe's own can arrive between the two reads
        worker = inferd.predict("probe", ["read"]).json()["outputs"][0]
        scraped = inferd.metrics()
        labels = {"model": "probe", "worker": "cuda:0/0"}
        allocated = sample(scraped, "inferd_gpu_memory_allocated_bytes", **labels)
        reserved = sample(scraped, "inferd_gpu_memory_reserved_bytes", **labels)
        if allocated == worker["allocated"] and reserved == worker["reserved"]:
            break
    figure = (
        f"worker read allocated {worker['allocated']:,} reserved {worker['reserved']:,} B; "
        f"/metrics allocated {allocated:,.0f} reserved {reserved:,.0f} B"
        if allocated is not None and reserved is not None
        else f"worker read {worker}; /metrics has no probe series"
    )
    ok = allocated == worker["allocated"] and reserved == worker["reserved"]
    return Row(check, name, figure, expected, verdict(ok), "")


def device_memory(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_1_2[5]
    if not ctx.cuda:
        present = "inferd_gpu_memory_used_bytes" in inferd.metrics()
        return Row(
            check,
            name,
            f"device series present: {present}",
            expected,
            verdict(not present),
            ctx.note("absent without a GPU"),
        )
    before, scraped, after = nvsmi.devices(), inferd.metrics(), nvsmi.devices()
    used = sample(scraped, "inferd_gpu_memory_used_bytes", device="cuda:0")
    total = sample(scraped, "inferd_gpu_memory_total_bytes", device="cuda:0")
    if not before or not after or used is None or total is None:
        return Row(
            check,
            name,
            f"/metrics used {used} total {total}; nvidia-smi {before}",
            expected,
            "FAIL",
            "a side is missing (no nvidia-smi, or no device series)",
        )
    smi_used = [before[0].used_bytes, after[0].used_bytes]
    used_off = min(abs(used - u) / max(u, 1) for u in smi_used)
    total_off = abs(total - before[0].total_bytes) / before[0].total_bytes
    figure = (
        f"used {used / 2**20:,.0f} MiB vs nvidia-smi {smi_used[0] / 2**20:,.0f} MiB ({100 * used_off:.2f}% off); "
        f"total {total / 2**20:,.0f} vs {before[0].total_bytes / 2**20:,.0f} MiB ({100 * total_off:.2f}% off)"
    )
    return Row(check, name, figure, expected, verdict(used_off <= 0.01 and total_off <= 0.01), "")


def _requests_total(inferd: InferdServer, model: str) -> float:
    return sum(
        value for labels, value in inferd.metrics().get("inferd_requests_total", []) if labels.get("model") == model
    )


def _replaced(inferd: InferdServer, model: str, slot: str, old_pid: int) -> bool:
    pid = inferd.worker_pids(model).get(slot)
    return pid is not None and pid != old_pid


def killed_under_load(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_6_7[0]
    slot, victim = sorted(inferd.worker_pids("tiny_cuda").items())[0]
    apps_before, devices_before = nvsmi.processes() or {}, nvsmi.devices()
    held = apps_before.get(victim)
    started = _requests_total(inferd, "tiny_cuda")
    body = b'{"inputs": [[' + b",".join(b"0.25" for _ in range(16)) + b"]]}"
    load = Load(f"{inferd.url}/models/tiny_cuda/predict", body, 32, 8.0, processes=2)
    try:
        wait_until(lambda: _requests_total(inferd, "tiny_cuda") - started >= 200, 30, "load to reach the server")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: _replaced(inferd, "tiny_cuda", slot, victim), 60, "the killed worker's replacement")
        replaced_s = time.monotonic() - killed_at
        result = load.result()
    finally:
        load.stop()
    restarts = sample(inferd.metrics(), "inferd_worker_restarts_total", model="tiny_cuda")
    figure = (
        f"replaced in {replaced_s:.1f} s (restarts {restarts:.0f}); load {result.ok:,}/{result.requests + result.errors:,} "
        f"answered 200, {result.failed} lost/failed {result.statuses}"
    )
    ok = result.failed == 0 and result.ok > 0
    if not ctx.cuda:
        return Row(check, name, figure, expected, verdict(ok), ctx.note())
    freed, memory_figure = _memory_back(victim, held, devices_before)
    return Row(check, name, f"{figure}; {memory_figure}", expected, verdict(ok and freed), "")


def _memory_back(victim: int, held: int | None, devices_before: list[nvsmi.DeviceReading] | None) -> tuple[bool, str]:
    """The killed pid's memory is released: it leaves nvidia-smi's list, and the device's use, with the
    replacement holding what the victim held, is back within half the victim's share of before."""
    try:
        wait_until(lambda: victim not in (nvsmi.processes() or {}), 20, "the killed worker to leave nvidia-smi")
        gone = True
    except TimeoutError:
        gone = False
    after = nvsmi.devices()
    if not devices_before or not after:
        return gone, f"victim gone from nvidia-smi: {gone}; no device readings"
    share = held or 256 * 2**20
    grown = after[0].used_bytes - devices_before[0].used_bytes
    text = (
        f"victim held {share / 2**20:,.0f} MiB{'' if held else ' (assumed)'}, gone from nvidia-smi: {gone}; "
        f"device used {devices_before[0].used_bytes / 2**20:,.0f} -> {after[0].used_bytes / 2**20:,.0f} MiB"
    )
    return gone and grown < share / 2, text


def fork_after_serving(ctx: Context, inferd: InferdServer) -> Row:
    check, name, expected = ROWS_6_7[1]
    while inferd.serving_s < 30:  # serving all the while: the fork helper lives through requests
        inferd.predict("tiny_cuda", [ROW16])
    fork_pid = inferd.forkserver_pid()
    apps = nvsmi.processes()
    slot, victim = sorted(inferd.worker_pids("probe").items())[0]
    forked_at = inferd.serving_s
    os.kill(victim, signal.SIGKILL)
    status, allocated = 0, None
    try:
        wait_until(lambda: _replaced(inferd, "probe", slot, victim), 60, "the probe worker's replacement")
        answer = inferd.predict("probe", ["read"])
        status = answer.status_code
        allocated = answer.json()["outputs"][0]["allocated"] if status == 200 else None
        reply = f"answered {status}" + (f" (allocated {allocated:,} B)" if allocated else "")
    except TimeoutError:
        reply = "no replacement became ready: " + _last_error(inferd.log())
    libcuda = _maps_libcuda(fork_pid)
    figure = (
        f"forkserver pid {fork_pid}: in nvidia-smi's list {fork_pid in (apps or {})}, libcuda mapped {libcuda}; "
        f"probe worker forked after {forked_at:.0f} s of serving: {reply}"
    )
    if not ctx.cuda:
        return Row(check, name, figure, expected, verdict(fork_pid is not None and status == 200), ctx.note())
    clean = fork_pid is not None and fork_pid not in (apps or {})
    note = "" if apps else "nvidia-smi lists no processes: the forkserver's context is judged by the working fork alone"
    return Row(check, name, figure, expected, verdict(clean and status == 200 and bool(allocated)), note)


def _maps_libcuda(pid: int | None) -> bool | None:
    if pid is None:
        return None
    try:
        return "libcuda.so" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def _last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if "ERROR" in line or "Error" in line]
    return lines[-1][-300:] if lines else "(no error in the log)"
