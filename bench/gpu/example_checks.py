"""Check 5: the example-shaped models with their network on the GPU and their CPU work (tokenizing,
image decoding) on the worker's pinned CPUs; and the image pipeline, once inferd has pipelines."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import zlib
from typing import Any

import numpy as np

from gpu import nvsmi
from gpu.bootstrap import REPO_ROOT
from gpu.context import NO_GPU, Context
from gpu.loadgen import Load, LoadResult, client_processes
from gpu.model_checks import image_shape
from gpu.report import FAIL, Row, guarded, make, skipped, verdict
from gpu.serving import InferdServer, handler

ROWS_5 = [
    ("5a", "MiniLM-shaped BERT on cuda", "all 200; 384-d unit vectors; tokenizing on the pinned CPUs"),
    ("5b", "image handler: CPU decode, cuda network", "all 200; one class per image; decode on the pinned CPUs"),
    ("5c", "image pipeline (pipeline: config)", "decode step on CPU, network step on cuda; all 200"),
]
SENTENCE = "The quick brown fox jumps over the lazy dog near the bank of the river."
SOURCE_SIZE = 256


def image_item(size: int = SOURCE_SIZE) -> str:
    """One client image: a smooth gradient (compressible, as photos are), base64 zlib uint8 HxWx3."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) % 256, np.tile(ramp, (size, 1))], axis=-1
    )
    return base64.b64encode(zlib.compress(pixels.astype(np.uint8).tobytes(), 1)).decode()


def _example_models(ctx: Context) -> list[dict[str, Any]]:
    tokenizer = REPO_ROOT / ".whl" / "minilm-tokenizer"
    minilm = {
        "name": "minilm",
        "handler": handler("MiniLMShaped"),
        "device": ctx.device(),
        "max_batch_size": 32,
        "batch_timeout_ms": 5,
        "handler_args": {"tokenizer_dir": str(tokenizer)},
        "warmup": [{"inputs": [SENTENCE]}],
    }
    images = {
        "name": "images",
        "handler": handler("ImageClassifier"),
        "device": ctx.device(),
        "max_batch_size": 32,
        "batch_timeout_ms": 5,
        "handler_args": {"source_size": SOURCE_SIZE, "size": 224},
        "warmup": [{"inputs": [image_item()]}],
    }
    if ctx.big_machine:  # decode and tokenizing get CPUs of their own; the main process keeps the rest
        minilm["cpu_affinity"] = ",".join(map(str, ctx.cpus[:4]))
        images["cpu_affinity"] = ",".join(map(str, ctx.cpus[4:8]))
    return [minilm, images]


def example_models(ctx: Context) -> list[Row]:
    pipeline = pipeline_row(ctx)
    if not ctx.runs_gpu_checks:
        return [*ctx.skip_rows(ROWS_5[:2]), pipeline]
    minilm, images = _example_models(ctx)
    tokenizer = (REPO_ROOT / ".whl" / "minilm-tokenizer" / "tokenizer.json").is_file()
    tokenizer_note = "MiniLM's own tokenizer" if tokenizer else "stand-in hashed tokenizer"
    first = guarded(
        ROWS_5[0], lambda: _served_row(ctx, ROWS_5[0], minilm, [SENTENCE, "another"], _unit_vectors, tokenizer_note)
    )
    second = guarded(ROWS_5[1], lambda: _served_row(ctx, ROWS_5[1], images, [image_item()] * 2, _classes, ""))
    return [first, second, pipeline]


def _served_row(
    ctx: Context, row: tuple[str, str, str], model: dict[str, Any], items: list[Any], right: Any, note: str
) -> Row:
    """One server per model, so one that fails to boot costs only its own row."""
    inferd = ctx.start(model["name"], [model])
    try:
        return _example_row(ctx, inferd, row, model, items, right, note)
    finally:
        ctx.stop(model["name"])


def _unit_vectors(outputs: Any) -> bool:
    return all(len(v) == 384 and abs(math.fsum(x * x for x in v) - 1) < 1e-3 for v in outputs)


def _classes(outputs: Any) -> bool:
    return all(isinstance(c, int) and 0 <= c < 1000 for c in outputs)


def _example_row(
    ctx: Context,
    inferd: InferdServer,
    row: tuple[str, str, str],
    model: dict[str, Any],
    items: list[Any],
    right: Any,
    note: str,
) -> Row:
    name = model["name"]
    answer = inferd.predict(name, items)
    correct = (
        answer.status_code == 200 and len(answer.json()["outputs"]) == len(items) and right(answer.json()["outputs"])
    )
    worker = inferd.models()[name]["workers"][0]
    body = json.dumps({"inputs": items[:1]}).encode()
    result: LoadResult = Load(
        f"{inferd.url}/models/{name}/predict",
        body,
        32,
        5.0 if ctx.cuda else 2.0,
        warmup_s=1.0,
        processes=client_processes(32),
    ).result()
    pinned = model.get("cpu_affinity")
    cpus_ok = pinned is None or ",".join(map(str, worker["cpus"])) == pinned
    apps = nvsmi.processes()
    on_gpu = bool(apps) and worker["pid"] in apps
    figure = (
        f"{result.ok_per_s:,.0f} req/s at c=32 (p50 {result.p50_ms:.1f} ms), {result.failed} failed; output right: {correct}; "
        f"worker CPUs {worker['cpus'] or 'unpinned'}; in nvidia-smi's list: {on_gpu}"
    )
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
    size = image_shape(ctx)[0]
    steps = [
        {
            "name": "image_decode",
            "handler": handler("ImageDecode"),
            "device": "cpu",
            "max_batch_size": 32,
            "handler_args": {"source_size": SOURCE_SIZE, "size": size},
        },
        {
            "name": "image_network",
            "path": ctx.files["torchscript"],
            "device": ctx.device(),
            "max_batch_size": 32,
            "batch_timeout_ms": 2,
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 3, size, size]}],
        },
        {"name": "image_pipeline", "pipeline": ["image_decode", "image_network"]},
    ]
    path = ctx.scratch / "pipeline.yaml"
    path.write_text(json.dumps({"models": steps}))
    check = subprocess.run(
        [sys.executable, "-m", "inferd", "validate", str(path)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        return make(
            ROWS_5[2],
            "guessed config rejected",
            FAIL,
            f"{key} exists; update bench/gpu/example_checks.py:_pipeline to its schema: {check.stderr[-400:]}",
        )
    inferd = ctx.start("pipeline", steps)
    try:
        answer = inferd.predict("image_pipeline", [image_item()])
        body = json.dumps({"inputs": [image_item()]}).encode()
        result = Load(f"{inferd.url}/models/image_pipeline/predict", body, 32, 5.0, warmup_s=1.0).result()
        figure = f"single HTTP {answer.status_code}; {result.ok_per_s:,.0f} req/s at c=32, {result.failed} failed"
        return make(ROWS_5[2], figure, verdict(answer.status_code == 200 and result.failed == 0), ctx.note())
    finally:
        ctx.stop("pipeline")
