"""Running one batch inside a worker: tensor models from a file, or a user's Handler.

A runner turns a batch's payloads (one per request) into one result per request. When a batch
raises, its requests are run apart so only the request whose data broke the model fails.
Imported only in worker processes: it imports torch.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
import traceback
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferd.config import ModelConfig, TensorSpec
from inferd.datatypes import datatype_of_array, datatype_of_torch, numpy_dtype
from inferd.errors import StartupError
from inferd.handler import Handler, concurrency_problem, load_handler_class, load_model_file, predicts_async
from inferd.messages import Items, PackedItems, Parameters, Payload, RequestFailure, TensorInfo
from inferd.segments import unreadable_input

log = logging.getLogger(__name__)


class ModelBroken(Exception):
    """The model misbehaved whatever its input (e.g. returned the wrong number of rows)."""


class Runner:
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()

    def run_batch(self, payloads: list[Payload]) -> list[Payload | RequestFailure]:
        unreadable = [unreadable_input(payload) for payload in payloads]
        if any(unreadable):  # a client removed its region before this worker mapped it: that request fails alone
            readable = iter(self.run_batch([p for p, gone in zip(payloads, unreadable) if gone is None]))
            return [RequestFailure("RegionUnreadable", gone.message) if gone else next(readable) for gone in unreadable]
        try:
            return list(self._run(payloads))
        except Exception as error:
            failures = batch_failures(error, payloads)
            return failures if failures is not None else [self.run_batch([payload])[0] for payload in payloads]

    def _run(self, payloads: list[Payload]) -> Sequence[Payload]:
        raise NotImplementedError


def batch_failures(error: Exception, payloads: list[Payload]) -> list[Payload | RequestFailure] | None:
    """What a batch that raised `error` answers, or None where its requests must be run apart
    (several requests: only the one whose data broke the model should fail)."""
    if isinstance(error, ModelBroken):
        return [RequestFailure("ModelBroken", str(error), bad_input=False) for _ in payloads]
    if len(payloads) == 1:
        return [_failure(error)]
    log.info("batch of %d requests raised %s; running them apart", len(payloads), error)
    return None


def _failure(error: Exception) -> RequestFailure:
    return RequestFailure(type(error).__name__, caller_message(error), detail=traceback_line(error))


MAX_DETAIL_CHARS = 4000
# TorchScript's own traceback headings, renamed so that a log holds no "Traceback" line to alarm on.
_TRACEBACK_HEADING = re.compile(r"^Traceback of TorchScript, (.*?) \(most recent call last\):$")


def traceback_line(error: BaseException) -> str:
    """The whole traceback as one log line (innermost frame first): every frame and the full
    message, TorchScript's own traceback included, yet one line per event in the log."""
    frames = traceback.extract_tb(error.__traceback__)
    where = " <- ".join(f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in reversed(frames))
    lines = (_TRACEBACK_HEADING.sub(r"TorchScript (\1):", line.strip()) for line in str(error).splitlines())
    message = " | ".join(line for line in lines if line)
    return f"{type(error).__name__}: {message} [at {where}]"[:MAX_DETAIL_CHARS]


# A traceback's frames are indented; the message is the first line at the margin after the last one.
_EXCEPTION_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*: ")
# An absolute path (not part of a URL or of a relative path): the caller learns its last part only.
_PATH = re.compile(r"(?<![\w.:/~-])(?:/[\w.@+~-]+)+/?")
MAX_MESSAGE_CHARS = 1000


def caller_message(error: Exception) -> str:
    """What the caller may see of a model's exception: its message, without the traceback that
    TorchScript puts in str() and without server paths."""
    text = str(error).strip() or type(error).__name__
    if "Traceback" in text:
        text = _after_last_traceback(text)
    text = _PATH.sub(lambda path: path.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    return text[:MAX_MESSAGE_CHARS]


def _after_last_traceback(text: str) -> str:
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    rest = lines[last + 1 :]
    start = next((i for i, line in enumerate(rest) if line and not line[0].isspace()), None)
    if start is None:
        return lines[0] if last else "the model raised (see the server log)"
    message = "\n".join(rest[start:]).strip()
    return _EXCEPTION_PREFIX.sub("", message, count=1)


def _row_offsets(counts: list[int]) -> list[int]:
    return list(np.cumsum(counts)[:-1])


class TensorRunner(Runner):
    """A TorchScript or torch.export model: named inputs concatenated along dim 0."""

    def __init__(self, model: ModelConfig, device: str) -> None:
        assert model.path is not None
        self.device = torch.device(device)
        self.module, program = load_model_file(Path(model.path), device)
        discovered_in, discovered_out = _program_signature(program) if program else ((), ())
        self.inputs = _infos(model.inputs) or discovered_in
        self.shapes_known = bool(self.inputs)  # else warmup cannot guess a shape
        self.inputs = self.inputs or (TensorInfo("input", "FP32", (-1,)),)
        self.outputs = _infos(model.outputs) or discovered_out

    def _run(self, payloads: list[Payload]) -> Sequence[Payload]:
        counts = [len(next(iter(p.values()))) for p in payloads]  # type: ignore[union-attr,operator]
        tensors = [self._batch_tensor(spec, payloads) for spec in self.inputs]
        with torch.inference_mode():
            produced = self.module(*tensors)
        named = self._name_outputs(produced)
        total = sum(counts)
        arrays = {}
        for name, tensor in named.items():
            if tensor.dim() == 0 or tensor.shape[0] != total:
                rows = "a scalar" if tensor.dim() == 0 else f"{tensor.shape[0]} rows"
                raise ModelBroken(f"output {name!r} has {rows} for a batch of {total} rows")
            arrays[name] = _to_numpy(tensor)
        if not self.outputs:  # TorchScript does not declare its outputs: learn them from a run
            self.outputs = tuple(
                TensorInfo(name, datatype_of_array(array).name, (-1, *array.shape[1:]))
                for name, array in arrays.items()
            )
        if len(payloads) == 1:  # one request (every batch at low load): nothing to split
            return [arrays]
        offsets = _row_offsets(counts)
        split = {name: np.split(array, offsets) for name, array in arrays.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(payloads))]

    def _batch_tensor(self, spec: TensorInfo, payloads: list[Payload]) -> torch.Tensor:
        parts = [p[spec.name] for p in payloads]  # type: ignore[call-overload,index]
        array = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])  # one copy: writable
        tensor = torch.from_numpy(array)
        if spec.datatype == "BF16":
            tensor = tensor.view(torch.bfloat16)
        return tensor.to(self.device, non_blocking=True)

    def _name_outputs(self, produced: Any) -> dict[str, torch.Tensor]:
        if isinstance(produced, torch.Tensor):
            produced = (produced,)
        if isinstance(produced, dict):
            return {str(k): v for k, v in produced.items()}
        if not isinstance(produced, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in produced):
            raise ModelBroken(f"the model returned {type(produced).__name__}, not tensors")
        names = [o.name for o in self.outputs]
        if len(names) != len(produced):
            names = ["output"] if len(produced) == 1 else [f"output_{i}" for i in range(len(produced))]
        return dict(zip(names, produced))

    def warmup_payload(self, sample: Any) -> Payload:
        if sample.zeros is not None:
            dtypes = {spec.name: spec.datatype for spec in self.inputs}
            return {
                name: np.zeros(shape, numpy_dtype(dtypes.get(name, "FP32"))) for name, shape in sample.zeros.items()
            }
        values = sample.inputs if isinstance(sample.inputs, dict) else {self.inputs[0].name: sample.inputs}
        return {spec.name: np.asarray(values[spec.name], numpy_dtype(spec.datatype)) for spec in self.inputs}

    def default_warmup(self) -> list[Payload]:
        shapes = [spec.shape[1:] for spec in self.inputs]
        if not self.shapes_known or any(-1 in shape for shape in shapes):
            return []  # a variable dimension: no safe guess for its size
        return [{spec.name: np.zeros((1, *spec.shape[1:]), numpy_dtype(spec.datatype)) for spec in self.inputs}]


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.uint16)
    return tensor.cpu().contiguous().numpy()


def _infos(specs: tuple[TensorSpec, ...] | None) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(s.name, s.datatype, s.shape) for s in specs or ())


def _program_signature(program: Any) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Input and output names, dtypes and shapes that a torch.export program carries."""
    user_inputs = set(program.graph_signature.user_inputs)
    inputs, outputs = [], []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            inputs.append(_info(node.name, node.meta.get("val")))
        elif node.op == "output":
            names = program.graph_signature.user_outputs
            values = [arg.meta.get("val") for arg in node.args[0]]
            outputs = [_info(n if len(values) > 1 else "output", v) for n, v in zip(names, values)]
    return tuple(i for i in inputs if i), tuple(o for o in outputs if o)


def _info(name: str, value: Any) -> TensorInfo | None:
    if not isinstance(value, torch.Tensor):
        return None
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorInfo(name, datatype_of_torch(str(value.dtype)), (-1, *shape[1:]))


class HandlerRunner(Runner):
    """A user's Handler: decode each item, predict the batch, encode each output. A `predict`
    with a `parameters` argument gets each item's request parameters beside the items. A `predict`
    that yields (`streams`) is gathered here: each item's output is the list of its chunks, each
    encoded (inferd.generation.handler_streams streams them instead)."""

    def __init__(self, model: ModelConfig, device: str, base_dir: Path) -> None:
        assert model.handler is not None
        handler_class = load_handler_class(model.handler, base_dir)
        self.handler: Handler = handler_class(**model.handler_args)
        self.handler.setup(device)
        self.inputs = _infos(model.inputs)
        self.outputs = _infos(model.outputs)
        self.takes_parameters = "parameters" in inspect.signature(self.handler.predict).parameters
        self.streams = inspect.isgeneratorfunction(self.handler.predict)
        # Several declared outputs: each encoded output is a dict of them, checked here.
        self.output_names = [spec.name for spec in self.outputs] if len(self.outputs) > 1 else None

    def _run(self, payloads: list[Payload]) -> Sequence[Payload]:
        requests = [values_and_parameters(payload) for payload in payloads]
        items, parameters = self.decoded(requests)
        if self.streams:
            encoded: list[Any] = [list(chunks) for chunks in zip(*self.chunks(items, parameters))] or [
                [] for _ in items
            ]
            return self.split(requests, encoded)
        return self.split(requests, self.checked_outputs(items, list(self.predict(items, parameters))))

    def checked_outputs(self, items: list[Any], outputs: list[Any]) -> list[Any]:
        """One encoded output per item, or ModelBroken."""
        if len(outputs) != len(items):
            raise ModelBroken(f"predict returned {len(outputs)} outputs for {len(items)} items")
        return self.encoded(outputs)

    def split(self, requests: list[tuple[list[Any], Parameters]], encoded: list[Any]) -> list[Any]:
        """Each request's own share of the batch's encoded outputs."""
        results, start = [], 0
        for values, _ in requests:
            results.append(encoded[start : start + len(values)])
            start += len(values)
        return results

    def decoded(self, requests: list[tuple[list[Any], Parameters]]) -> tuple[list[Any], list[Parameters]]:
        """The requests' items, decoded, and each item's parameters."""
        items = [self.handler.decode(item) for values, _ in requests for item in values]
        return items, [given for values, given in requests for _ in values]

    def predict(self, items: list[Any], parameters: list[Parameters]) -> Any:
        if self.takes_parameters:
            return self.handler.predict(items, parameters=parameters)  # type: ignore[call-arg]
        return self.handler.predict(items)

    def chunks(self, items: list[Any], parameters: list[Parameters]) -> Generator[list[Any], None, None]:
        """A yielding predict's chunks, each checked (one per item) and encoded. Closing this
        closes the handler's generator at once (GeneratorExit at its yield)."""
        generator = self.predict(items, parameters)
        try:
            for chunk in generator:
                chunk = list(chunk)
                if len(chunk) != len(items):
                    raise ModelBroken(f"predict yielded {len(chunk)} chunks for {len(items)} items")
                yield self.encoded(chunk)
        finally:
            generator.close()

    def encoded(self, outputs: list[Any]) -> list[Any]:
        return [self._checked(self.handler.encode(output)) for output in outputs]

    def _checked(self, encoded: Any) -> Any:
        names = self.output_names
        if names is not None and not (isinstance(encoded, dict) and set(names) <= set(encoded)):
            given = sorted(encoded) if isinstance(encoded, dict) else type(encoded).__name__
            raise ModelBroken(f"the handler declares outputs {names}: each output must be a dict of them, got {given}")
        return encoded

    def warmup_payload(self, sample: Any) -> Payload:
        return list(sample.inputs) if isinstance(sample.inputs, list) else [sample.inputs]

    def default_warmup(self) -> list[Payload]:
        return []


def values_and_parameters(payload: Payload) -> tuple[list[Any], Parameters]:
    if isinstance(payload, PackedItems):
        payload = payload.unpack()
    if isinstance(payload, Items):
        return payload.values, payload.parameters
    assert isinstance(payload, list)
    return payload, Parameters()


def build_runner(model: ModelConfig, device: str, base_dir: Path) -> TensorRunner | HandlerRunner:
    if model.handler is None:
        return TensorRunner(model, device)
    handler_class = load_handler_class(model.handler, base_dir)
    problem = concurrency_problem(model, handler_class)
    if problem is not None:
        raise StartupError(f"max_concurrency: {problem}")
    if predicts_async(handler_class):
        from inferd.async_runner import AsyncHandlerRunner  # it builds on this module

        return AsyncHandlerRunner(model, device, base_dir)
    return HandlerRunner(model, device, base_dir)


def warm_up(runner: TensorRunner | HandlerRunner, model: ModelConfig) -> float:
    """Run the configured warmup samples (or one zero batch); a failure stops the boot."""
    payloads = [runner.warmup_payload(s) for s in model.warmup] or runner.default_warmup()
    started = time.perf_counter()
    for _ in range(model.warmup_runs):
        for result in runner.run_batch(payloads) if payloads else []:
            if isinstance(result, RequestFailure):
                log.error("warmup raised: %s", result.detail or result.message)
                raise RuntimeError(f"warmup failed: {result.error_type}: {result.message}")
    return time.perf_counter() - started
