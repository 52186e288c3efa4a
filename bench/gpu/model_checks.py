"""Checks 3, 4 and 5: gpu_memory_fraction, ResNet-50 throughput against raw torch, and the
example-shaped models (MiniLM, an image classifier) with their network on the GPU."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gpu import nvsmi
from gpu.bootstrap import REPO_ROOT
from gpu.context import NO_GPU, Context
from gpu.loadgen import Load, LoadResult, client_processes
from gpu.report import FAIL, Row, guarded, make, skipped, verdict
from gpu.serving import InferdServer, handler, sample, wait_until

ROWS_3 = [
    ("3a", "gpu_memory_fraction enforced", "over-share allocation refused; message names model + gpu_memory_fraction"),
    ("3b", "an over-share model is isolated", "its requests 503 with the reason; the other model 200"),
]
ROWS_4 = [
    ("4a", "ResNet-50 TorchScript, batch 32, c=64", ">= 0.90 x raw torch images/s (batch 32, same GPU)"),
    ("4b", "ResNet-50 torch.export, batch 32, c=64", ">= 0.90 x raw torch images/s (batch 32, same GPU)"),
]
ROWS_5 = [
    ("5a", "MiniLM-shaped BERT on cuda", "all 200; 384-d unit vectors; tokenizing on the pinned CPUs"),
    ("5b", "image handler: CPU decode, cuda network", "all 200; one class per image; decode on the pinned CPUs"),
    ("5c", "image pipeline (pipeline: config)", "decode step on CPU, network step on cuda; all 200"),
]
SENTENCE = "The quick brown fox jumps over the lazy dog near the bank of the river."
SOURCE_SIZE = 256


# --- 3: gpu_memory_fraction ---------------------------------------------------------------------


def memory_fraction(ctx: Context) -> list[Row]:
    if not ctx.cuda:
        reason = f"SKIPPED ({NO_GPU}; gpu_memory_fraction is CUDA's allocator limit)"
        return [skipped(*spec, reason) for spec in ROWS_3]
    models = [
        {"name": "steady", "path": ctx.files["tiny"], "device": "cuda:0", "gpu_memory_fraction": 0.2,
         "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]},
        {"name": "hog", "handler": handler("MemoryHog"), "device": "cuda:0", "gpu_memory_fraction": 0.02,
         "handler_args": {"need_fraction": 0.04}},
    ]  # fmt: skip
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
    return lines[-1].strip()[-400:] if lines else ""


def _clear(message: str) -> tuple[bool, str]:
    named = "hog" in message and "out of memory" in message.lower()
    knob = "gpu_memory_fraction" in message
    missing = [] if knob else ["gpu_memory_fraction (the setting to change)"]
    if not named:
        missing.insert(0, "the model and 'out of memory'")
    return named and knob, ("message lacks " + ", ".join(missing)) if missing else ""


def _fraction_after_exit(inferd: InferdServer) -> list[Row]:
    line = _hog_line(inferd.log())
    clear, lack = _clear(line)
    refused = bool(line)
    first = make(ROWS_3[0], f"refused: {refused}; log: {line or '(no out-of-memory line)'}", verdict(refused and clear), lack)
    figure = f"inferd exited at start-up (exit {inferd.exit_code()}): the steady model was never served"
    second = make(ROWS_3[1], figure, FAIL, "one model's failure to boot stops the whole daemon (supervisor.start)")
    return [first, second]


def _fraction_while_serving(inferd: InferdServer) -> list[Row]:
    states = {name: m["state"] for name, m in inferd.models().items()}
    steady = inferd.predict("steady", [[0.25] * 16])
    hog = inferd.predict("hog", ["x"])
    message = hog.json().get("error", "") if hog.headers.get("content-type", "").startswith("application/json") else ""
    line = _hog_line(inferd.log())
    refused = states["hog"] != "ready"
    clear, lack = _clear(f"{message} {line}")
    first = make(ROWS_3[0], f"hog {states['hog']}; answer: {message[-300:] or line}", verdict(refused and clear),
                lack if refused else "the hog booted: its allocation above its share was not refused")  # fmt: skip
    figure = f"hog HTTP {hog.status_code}, steady HTTP {steady.status_code}"
    return [first, make(ROWS_3[1], figure, verdict(hog.status_code == 503 and steady.status_code == 200))]


# --- 4: ResNet-50 through inferd vs raw torch ----------------------------------------------------


def _shape(ctx: Context) -> tuple[int, int]:
    """(image size, batch): the real thing on a GPU, something a CPU rehearsal can finish."""
    return (224, 32) if ctx.cuda else (64, 8)


def resnet_throughput(ctx: Context) -> list[Row]:
    if not ctx.runs_gpu_checks:
        return ctx.skip_rows(ROWS_4)
    ctx.files.update(ctx.wait_for_resnet())
    size, batch = _shape(ctx)
    raw = _raw_images_per_s(ctx, [ctx.files["torchscript"], ctx.files["export"]], size, batch)
    spec = {"device": ctx.device(), "workers_per_device": 2, "max_batch_size": batch, "batch_timeout_ms": 2,
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 3, size, size]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]}  # fmt: skip
    models = [{"name": "resnet_ts", "path": ctx.files["torchscript"], **spec},
              {"name": "resnet_ep", "path": ctx.files["export"], **spec}]  # fmt: skip
    inferd = ctx.start("resnet", models)
    try:
        pairs = zip(ROWS_4, ("resnet_ts", "resnet_ep"), (ctx.files["torchscript"], ctx.files["export"]))
        return [guarded(row, lambda m=m, f=f, row=row: _through_inferd(ctx, inferd, row, m, raw[f], size)) for row, m, f in pairs]
    finally:
        ctx.stop("resnet")


def _raw_images_per_s(ctx: Context, files: list[str], size: int, batch: int) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).with_name("raw_torch.py")), "--device", ctx.device(),
               "--batch", str(batch), "--image-size", str(size), "--seconds", "5" if ctx.cuda else "2", *files]  # fmt: skip
    finished = subprocess.run(command, check=True, capture_output=True, text=True, timeout=180)
    return dict(json.loads(finished.stdout.strip().splitlines()[-1])["images_per_s"])


def v2_image_request(size: int) -> tuple[bytes, dict[str, str]]:
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 3, size, size], "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + pixels.tobytes(), headers


def _batch_totals(inferd: InferdServer, model: str) -> tuple[float, float]:
    scraped = inferd.metrics()
    return (sample(scraped, "inferd_batch_size_sum", model=model) or 0.0,
            sample(scraped, "inferd_batch_size_count", model=model) or 0.0)  # fmt: skip


def _through_inferd(ctx: Context, inferd: InferdServer, row: tuple[str, str, str], model: str, raw: float, size: int) -> Row:
    body, headers = v2_image_request(size)
    items_before, batches_before = _batch_totals(inferd, model)
    seconds = 8.0 if ctx.cuda else 3.0
    load = Load(f"{inferd.url}/v2/models/{model}/infer", body, 64, seconds, warmup_s=2.0 if ctx.cuda else 1.0,
                headers=headers, processes=client_processes(64))  # fmt: skip
    cpu = inferd.cpu_percent_during(seconds / 2)  # near 100: the front end, not the GPU, sets the pace
    result = load.result()
    items, batches = (a - b for a, b in zip(_batch_totals(inferd, model), (items_before, batches_before)))
    ratio = result.ok_per_s / raw if raw else 0.0
    figure = (f"inferd {result.ok_per_s:,.0f} img/s vs raw {raw:,.0f} = {ratio:.2f}; mean batch {items / max(batches, 1):.1f}; "
              f"main process CPU {cpu:.0f}%; p50 {result.p50_ms:.1f} ms; {result.failed} failed")  # fmt: skip
    note = "one uint8 3x%dx%d image a request, v2 binary; 2 workers; raw = host batch -> GPU -> model -> host" % (size, size)
    ok = result.failed == 0 and ratio >= 0.9
    return make(row, figure, verdict(ok if ctx.cuda else result.failed == 0), ctx.note(note))


# --- 5: the example-shaped models -----------------------------------------------------------------


def image_item(size: int = SOURCE_SIZE) -> str:
    """One client image: a smooth gradient (compressible, as photos are), base64 zlib uint8 HxWx3."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) % 256, np.tile(ramp, (size, 1))], axis=-1)
    return base64.b64encode(zlib.compress(pixels.astype(np.uint8).tobytes(), 1)).decode()


def _example_models(ctx: Context) -> list[dict[str, Any]]:
    tokenizer = REPO_ROOT / ".whl" / "minilm-tokenizer"
    minilm = {"name": "minilm", "handler": handler("MiniLMShaped"), "device": ctx.device(), "max_batch_size": 32,
              "batch_timeout_ms": 5, "handler_args": {"tokenizer_dir": str(tokenizer)}, "warmup": [{"inputs": [SENTENCE]}]}
    images = {"name": "images", "handler": handler("ImageClassifier"), "device": ctx.device(), "max_batch_size": 32,
              "batch_timeout_ms": 5, "handler_args": {"source_size": SOURCE_SIZE, "size": 224},
              "warmup": [{"inputs": [image_item()]}]}  # fmt: skip
    if ctx.big_machine:  # decode and tokenizing get CPUs of their own; the main process keeps the rest
        minilm["cpu_affinity"] = ",".join(map(str, ctx.cpus[:4]))
        images["cpu_affinity"] = ",".join(map(str, ctx.cpus[4:8]))
    return [minilm, images]


def example_models(ctx: Context) -> list[Row]:
    pipeline = pipeline_row(ctx)
    if not ctx.runs_gpu_checks:
        return [*ctx.skip_rows(ROWS_5[:2]), pipeline]
    models = _example_models(ctx)
    inferd = ctx.start("examples", models)
    try:
        tokenizer = (REPO_ROOT / ".whl" / "minilm-tokenizer" / "tokenizer.json").is_file()
        first = guarded(ROWS_5[0], lambda: _example_row(ctx, inferd, ROWS_5[0], models[0], [SENTENCE, "another one"], _unit_vectors,
                                                        "MiniLM's own tokenizer" if tokenizer else "stand-in hashed tokenizer"))
        second = guarded(ROWS_5[1], lambda: _example_row(ctx, inferd, ROWS_5[1], models[1], [image_item()] * 2, _classes, ""))
        return [first, second, pipeline]
    finally:
        ctx.stop("examples")


def _unit_vectors(outputs: Any) -> bool:
    return all(len(v) == 384 and abs(math.fsum(x * x for x in v) - 1) < 1e-3 for v in outputs)


def _classes(outputs: Any) -> bool:
    return all(isinstance(c, int) and 0 <= c < 1000 for c in outputs)


def _example_row(ctx: Context, inferd: InferdServer, row: tuple[str, str, str], model: dict[str, Any],
                 items: list[Any], right: Any, note: str) -> Row:  # fmt: skip
    name = model["name"]
    answer = inferd.predict(name, items)
    correct = answer.status_code == 200 and len(answer.json()["outputs"]) == len(items) and right(answer.json()["outputs"])
    worker = inferd.models()[name]["workers"][0]
    body = json.dumps({"inputs": items[:1]}).encode()
    result: LoadResult = Load(f"{inferd.url}/models/{name}/predict", body, 32, 5.0 if ctx.cuda else 2.0,
                              warmup_s=1.0, processes=client_processes(32)).result()  # fmt: skip
    pinned = model.get("cpu_affinity")
    cpus_ok = pinned is None or ",".join(map(str, worker["cpus"])) == pinned
    apps = nvsmi.processes()
    on_gpu = bool(apps) and worker["pid"] in apps
    figure = (f"{result.ok_per_s:,.0f} req/s at c=32 (p50 {result.p50_ms:.1f} ms), {result.failed} failed; output right: {correct}; "
              f"worker CPUs {worker['cpus'] or 'unpinned'}; in nvidia-smi's list: {on_gpu}")  # fmt: skip
    ok = correct and result.failed == 0 and cpus_ok and (on_gpu or apps == {} or not ctx.cuda)
    return make(row, figure, verdict(ok), ctx.note(note))


def pipeline_key() -> str | None:
    """The config field a pipeline feature would add, if inferd has one by now."""
    from inferd import config

    for section in (config.ModelConfig, config.Config):
        for field_name in section.model_fields:
            if "pipeline" in field_name:
                return f"{section.__name__}.{field_name}"
    return None


def pipeline_row(ctx: Context) -> Row:
    key = pipeline_key()
    if key is None:
        return skipped(*ROWS_5[2], "SKIPPED (pipelines not built yet: inferd.config has no pipeline field)")
    if not ctx.runs_gpu_checks:
        return skipped(*ROWS_5[2], f"SKIPPED ({NO_GPU}; found {key})")
    return guarded(ROWS_5[2], lambda: _pipeline(ctx, key))


def _pipeline(ctx: Context, key: str) -> Row:
    """A guess at the pipeline schema (steps naming served models); if inferd rejects it the row
    says so with inferd's own problems, to be fixed here once the feature's schema is known."""
    ctx.files.update(ctx.wait_for_resnet())
    size = _shape(ctx)[0]
    steps = [
        {"name": "image_decode", "handler": handler("ImageDecode"), "device": "cpu", "max_batch_size": 32,
         "handler_args": {"source_size": SOURCE_SIZE, "size": size}},
        {"name": "image_network", "path": ctx.files["torchscript"], "device": ctx.device(), "max_batch_size": 32,
         "batch_timeout_ms": 2, "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 3, size, size]}]},
        {"name": "image_pipeline", "pipeline": ["image_decode", "image_network"]},
    ]  # fmt: skip
    path = ctx.scratch / "pipeline.yaml"
    path.write_text(json.dumps({"models": steps}))
    check = subprocess.run([sys.executable, "-m", "inferd", "validate", str(path)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        return make(ROWS_5[2], "guessed config rejected", FAIL,
                   f"{key} exists; update bench/gpu/model_checks.py:_pipeline to its schema: {check.stderr[-400:]}")  # fmt: skip
    inferd = ctx.start("pipeline", steps)
    try:
        answer = inferd.predict("image_pipeline", [image_item()])
        body = json.dumps({"inputs": [image_item()]}).encode()
        result = Load(f"{inferd.url}/models/image_pipeline/predict", body, 32, 5.0, warmup_s=1.0).result()
        figure = f"single HTTP {answer.status_code}; {result.ok_per_s:,.0f} req/s at c=32, {result.failed} failed"
        return make(ROWS_5[2], figure, verdict(answer.status_code == 200 and result.failed == 0), ctx.note())
    finally:
        ctx.stop("pipeline")
