"""Checks 3 and 4: gpu_memory_fraction, and ResNet-50 through inferd against raw torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpu.context import NO_GPU, Context
from gpu.loadgen import Load, client_processes
from gpu.report import FAIL, Row, guarded, make, skipped, verdict
from gpu.serving import InferdServer, handler, sample, wait_until

ROWS_3 = [
    ("3a", "gpu_memory_fraction enforced", "the hog's allocation above its share refused (CUDA OOM)"),
    ("3b", "the refusal's message", "names the model and gpu_memory_fraction, the setting to change"),
    ("3c", "an over-share model is isolated", "its requests 503 with the reason; the other model 200"),
]
ROWS_4 = [
    ("4a", "ResNet-50 TorchScript, batch 32, c=64", ">= 0.90 x raw torch images/s (batch 32, same GPU)"),
    ("4b", "ResNet-50 torch.export, batch 32, c=64", ">= 0.90 x raw torch images/s (batch 32, same GPU)"),
]


# --- 3: gpu_memory_fraction ---------------------------------------------------------------------


def memory_fraction(ctx: Context) -> list[Row]:
    if not ctx.cuda:
        reason = f"SKIPPED ({NO_GPU}; gpu_memory_fraction is CUDA's allocator limit)"
        return [skipped(*spec, reason) for spec in ROWS_3]
    models = [
        {
            "name": "steady",
            "path": ctx.files["tiny"],
            "device": "cuda:0",
            "gpu_memory_fraction": 0.2,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        },
        {
            "name": "hog",
            "handler": handler("MemoryHog"),
            "device": "cuda:0",
            "gpu_memory_fraction": 0.02,
            "handler_args": {"need_fraction": 0.04},
        },
    ]
    inferd = ctx.launch("fraction", models)
    try:
        wait_until(lambda: _settled(inferd), 120, "inferd to exit or to settle the hog's state")
        if inferd.exit_code() is not None:
            return _fraction_after_exit(inferd)
        return _fraction_while_serving(inferd)
    finally:
        ctx.stop("fraction")


def _settled(inferd: InferdServer) -> bool:
    if inferd.exit_code() is not None:
        return True
    try:
        states = {name: m["state"] for name, m in inferd.models().items()}
    except Exception:  # still binding its port
        return False
    return states.get("steady") == "ready" and states.get("hog") in ("ready", "unavailable")


def _hog_line(text: str) -> str:
    lines = [line for line in text.splitlines() if "hog" in line and "out of memory" in line.lower()]
    return lines[-1].strip()[-500:] if lines else ""


def _refusal_rows(refused: bool, message: str, refusal_figure: str) -> list[Row]:
    knob = "gpu_memory_fraction" in message
    enforced = make(
        ROWS_3[0],
        refusal_figure,
        verdict(refused),
        "" if refused else "the hog booted: its allocation above its share was not refused",
    )
    named = make(
        ROWS_3[1],
        f"names the model: {'hog' in message}; names gpu_memory_fraction: {knob}",
        verdict(refused and "hog" in message and knob),
        f"message: {message[-400:]}" if message else "",
    )
    return [enforced, named]


def _fraction_after_exit(inferd: InferdServer) -> list[Row]:
    line = _hog_line(inferd.log())
    rows = _refusal_rows(bool(line), line, "CUDA out of memory at the hog's setup" if line else "no out-of-memory line")
    figure = f"inferd exited at start-up (exit {inferd.exit_code()}): the steady model was never served"
    return [
        *rows,
        make(ROWS_3[2], figure, FAIL, "one model's failure to boot stops the whole daemon (Supervisor.start)"),
    ]


def _fraction_while_serving(inferd: InferdServer) -> list[Row]:
    states = {name: m["state"] for name, m in inferd.models().items()}
    steady = inferd.predict("steady", [[0.25] * 16])
    hog = inferd.predict("hog", ["x"])
    message = hog.json().get("error", "") if hog.headers.get("content-type", "").startswith("application/json") else ""
    line = _hog_line(inferd.log())
    refused = states["hog"] != "ready" and bool(line)
    rows = _refusal_rows(refused, f"{message} {line}".strip(), f"hog {states['hog']}")
    figure = f"hog HTTP {hog.status_code} ({message[-200:]}), steady HTTP {steady.status_code}"
    return [*rows, make(ROWS_3[2], figure, verdict(hog.status_code == 503 and steady.status_code == 200))]


# --- 4: ResNet-50 through inferd vs raw torch ----------------------------------------------------


def image_shape(ctx: Context) -> tuple[int, int]:
    """(image size, batch): the real thing on a GPU, something a CPU rehearsal can finish."""
    return (224, 32) if ctx.cuda else (64, 8)


def resnet_throughput(ctx: Context) -> list[Row]:
    if not ctx.runs_gpu_checks:
        return ctx.skip_rows(ROWS_4)
    ctx.files.update(ctx.wait_for_resnet())
    size, batch = image_shape(ctx)
    raw = _raw_images_per_s(ctx, [ctx.files["torchscript"], ctx.files["export"]], size, batch)
    spec = {
        "device": ctx.device(),
        "workers_per_device": 2,
        "max_batch_size": batch,
        "batch_timeout_ms": 2,
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}],
    }
    variants = zip(ROWS_4, ("resnet_ts", "resnet_ep"), (ctx.files["torchscript"], ctx.files["export"]))
    return [
        guarded(row, lambda row=row, name=name, path=path: _variant(ctx, row, name, path, spec, raw.get(path), size))
        for row, name, path in variants
    ]


def _variant(
    ctx: Context, row: tuple[str, str, str], name: str, path: str, spec: dict[str, Any], raw: Any, size: int
) -> Row:
    """One server per format, so a file that fails to load in inferd costs only its own row."""
    if not isinstance(raw, float):
        return make(row, "raw torch could not run the file", FAIL, str(raw))
    inferd = ctx.start(name, [{"name": name, "path": path, **spec}])
    try:
        return _through_inferd(ctx, inferd, row, name, raw, size)
    finally:
        ctx.stop(name)


def _raw_images_per_s(ctx: Context, files: list[str], size: int, batch: int) -> dict[str, float | str]:
    """images/s per file, or why raw torch could not run it."""
    command = [
        sys.executable,
        str(Path(__file__).with_name("raw_torch.py")),
        "--device",
        ctx.device(),
        "--batch",
        str(batch),
        "--image-size",
        str(size),
        "--seconds",
        "5" if ctx.cuda else "2",
        *files,
    ]
    finished = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    if finished.returncode != 0:
        raise RuntimeError(f"raw torch failed: {finished.stderr[-800:]}")
    return dict(json.loads(finished.stdout.strip().splitlines()[-1])["images_per_s"])


def v2_image_request(size: int) -> tuple[bytes, dict[str, str]]:
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 3, size, size],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + pixels.tobytes(), headers


def _batch_totals(inferd: InferdServer, model: str) -> tuple[float, float]:
    scraped = inferd.metrics()
    return (
        sample(scraped, "inferd_batch_size_sum", model=model) or 0.0,
        sample(scraped, "inferd_batch_size_count", model=model) or 0.0,
    )


def _through_inferd(
    ctx: Context, inferd: InferdServer, row: tuple[str, str, str], model: str, raw: float, size: int
) -> Row:
    body, headers = v2_image_request(size)
    items_before, batches_before = _batch_totals(inferd, model)
    seconds, warmup_s = (8.0, 2.0) if ctx.cuda else (3.0, 1.0)
    load = Load(
        f"{inferd.url}/v2/models/{model}/infer",
        body,
        64,
        seconds,
        warmup_s=warmup_s,
        headers=headers,
        processes=client_processes(64),
    )
    time.sleep(warmup_s)  # measure the main process's CPU inside the counted window, not the warm-up
    cpu = inferd.cpu_percent_during(seconds / 2)  # near 100: the front end, not the GPU, sets the pace
    result = load.result()
    items, batches = (a - b for a, b in zip(_batch_totals(inferd, model), (items_before, batches_before)))
    ratio = result.ok_per_s / raw if raw else 0.0
    figure = (
        f"inferd {result.ok_per_s:,.0f} img/s vs raw {raw:,.0f} = {ratio:.2f}; mean batch {items / max(batches, 1):.1f}; "
        f"main process CPU {cpu:.0f}%; p50 {result.p50_ms:.1f} ms; {result.failed} failed"
    )
    note = f"one uint8 3x{size}x{size} image a request, v2 binary; 2 workers; raw = host batch -> GPU -> model -> host"
    ok = result.failed == 0 and ratio >= 0.9
    return make(row, figure, verdict(ok if ctx.cuda else result.failed == 0), ctx.note(note))
