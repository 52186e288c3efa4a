"""The `Handler` contract users subclass, and loading of model files and handler classes.

A handler serves a model that needs Python around it (a tokenizer, say). Its methods run inside a
worker process, in this order:

    handler = MyHandler(**handler_args)     # from the YAML's `handler_args`
    handler.setup(device)                   # once: load weights onto "cpu" or "cuda:N"
    item = handler.decode(raw_item)         # per item of a request, e.g. one string
    outputs = handler.predict(items)        # per batch: a list of decoded items, one output each
    answer = handler.encode(output)         # per item: a JSON value or a numpy array

A request's `inputs` is a list of items (or one bare item); the batcher groups items of several
requests into one `predict` call and gives each request back exactly its own outputs.

A `predict` that is a generator function streams: each `yield` is a list with one chunk per item
(in order), each chunk goes through `encode`, and a request with `"stream": true` on the native
route gets its items' chunks as Server-Sent Events, one event per yield. Requests that arrive
while a predict runs join the next call; a client that leaves stops its request at once, and the
generator is closed (GeneratorExit at its `yield`) once no request of that call is left. A request
without `"stream"` gets, per item, the list of its encoded chunks.

A handler that declares several `inputs` in the YAML gets each item as a dict of them (input name
-> that item's value: a number, a string, or nested lists for a tensor of more dimensions, BYTES
as str where they are UTF-8); one that declares several `outputs` returns (after `encode`) a dict
of them per item. A `predict(self, items, parameters)` also gets, per item, the request's
`inferd.messages.Parameters` (its own and each requested output's parameters).

A `predict` may be `async def` (a step that waits on I/O, such as a call to another service): the
worker then runs it on an event loop of its own, with up to the model's `max_concurrency` batches
in flight at once; `decode` and `encode` stay plain functions.

This module imports torch only inside functions, so the main process can use `detect_format`.
"""

from __future__ import annotations

import inspect
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from inferd.config import ModelConfig
from inferd.errors import StartupError
from inferd.importer import import_named

TORCHSCRIPT = "torchscript"
EXPORTED = "torch.export"


class Handler:
    """Base class for handler models. Override `setup` and `predict`; the rest have defaults."""

    def __init__(self, **handler_args: Any) -> None:
        self.handler_args = handler_args

    def setup(self, device: str) -> None:
        """Load the model onto `device` ("cpu" or "cuda:N"). Called once, before any request."""

    def decode(self, item: Any) -> Any:
        """Turn one raw input item (as JSON gave it) into what `predict` takes. Raise ValueError
        with a clear message on bad input: the caller gets a 400 with that message."""
        return item

    def predict(self, items: list[Any]) -> Sequence[Any]:
        """Run one batch: return exactly one output per item, in order; or, as a generator
        function, yield a list of one chunk per item as many times as there are chunks."""
        raise NotImplementedError

    def encode(self, output: Any) -> Any:
        """Turn one output into a JSON value (lists, numbers, strings) or a numpy array."""
        return output


class GenerativeHandler(Handler):
    """Base class for generative models (a `generation:` section in the YAML). The worker runs a
    continuous batch: each step it calls `step` once with every running sequence; a sequence joins
    at the next step after it arrives and leaves as soon as it ends. In order:

        tokens = handler.tokenize(prompt)         # a text, or chat messages (apply the chat template)
        next_tokens = handler.step(sequences)     # once per step: one new token per sequence
        text = handler.detokenize(tokens)         # the text of a sequence's generated tokens
        handler.release(sequence)                 # once a sequence has ended: free its cache

    A sequence (inferd.generation.sequence.Sequence) whose `cache` is None is new: `step` prefills
    its `prompt_tokens` and sets `cache` to whatever it keeps per sequence. Raise ValueError in
    `tokenize` on bad input: the caller gets a 400 with that message."""

    def tokenize(self, prompt: str | list[dict[str, str]]) -> list[int]:
        raise NotImplementedError

    def detokenize(self, tokens: list[int]) -> str:
        raise NotImplementedError

    def end_tokens(self) -> frozenset[int]:
        """Tokens that end a sequence (finish_reason "stop"); not part of its text."""
        return frozenset()

    def step(self, sequences: list[Any]) -> list[int]:
        raise NotImplementedError

    def release(self, sequence: Any) -> None:
        sequence.cache = None


def detect_format(path: Path) -> str:
    """Tell a TorchScript archive from a torch.export one by content, not by file name."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except FileNotFoundError:
        raise StartupError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise StartupError(f"{path}: not a TorchScript or torch.export file ({error})") from None
    if any(name.endswith("/archive_format") for name in names):
        return EXPORTED
    if any(name.endswith("/data.pkl") for name in names) and any("/code/" in n for n in names):
        return TORCHSCRIPT
    raise StartupError(f"{path}: a zip archive, but neither TorchScript nor torch.export")


def model_file_problems(models: Iterable[tuple[int, ModelConfig]]) -> list[str]:
    """Each model file among `models` (by YAML index) that is missing or of an unknown format."""
    problems = []
    for index, model in models:
        if model.path is not None:
            try:
                detect_format(model.path)
            except StartupError as error:
                problems.append(f"models[{index}].path: {error}")
        for output, spec in enumerate(model.outputs or ()):
            if spec.label_filename is not None and not spec.label_filename.is_file():
                where = f"models[{index}].outputs[{output}].label_filename"
                problems.append(f"{where}: {spec.label_filename}: no such file (one class name a line)")
    return problems


def handler_problem(spec: str, base_dir: Path) -> str | None:
    """Why `spec` does not resolve to a Handler subclass, or None. Imports the user's module."""
    try:
        load_handler_class(spec, base_dir)
    except StartupError as error:
        return str(error)
    return None


def predicts_async(handler_class: type[Handler]) -> bool:
    """Whether the handler's `predict` is `async def`: its worker then runs batches on an event loop."""
    return inspect.iscoroutinefunction(handler_class.predict)


def concurrency_problem(model: ModelConfig, handler_class: type[Handler]) -> str | None:
    """Why this handler cannot hold `max_concurrency` batches at once, or None."""
    if model.max_concurrency <= 1 or predicts_async(handler_class):
        return None
    return (
        f"{model.max_concurrency} batches at once need a predict that is 'async def' (one that awaits I/O); "
        f"{handler_class.__name__}.predict is a plain function: make it async or remove max_concurrency"
    )


def load_model_file(path: Path, device: str) -> tuple[Any, Any]:
    """Load a model file onto `device`; returns (callable module, ExportedProgram or None).

    Neither loader unpickles arbitrary Python objects.
    """
    import torch

    kind = detect_format(path)
    if kind == TORCHSCRIPT:
        module = torch.jit.load(str(path), map_location=device)
        return module.eval(), None
    program = torch.export.load(str(path))
    module = program.module().to(device)
    return _traced_or_none(module, program, device) or module, program


def _traced_or_none(module: Any, program: Any, device: str) -> Any:
    """`program.module()` runs its graph through Python (about 6x slower than TorchScript on a
    small model). A torch.export graph has no data-dependent control flow, so tracing it yields
    the same computation as TorchScript; it is used only if it matches the module on a second
    batch size, else the module is served as it is."""
    import logging

    import torch

    log = logging.getLogger(__name__)
    try:
        example, other = _example_inputs(program, device, rows=2), _example_inputs(program, device, rows=3)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the program's own shape guards warn while traced
            traced = torch.jit.trace(module, example, check_trace=False, strict=False)
            same = _same_outputs(traced(*other), module(*other))
    except Exception as error:  # tracing is an optimisation: any failure keeps the module
        log.info("serving the torch.export module as it is (tracing failed: %s)", error)
        return None
    if not same:
        log.warning("serving the torch.export module as it is: its traced form answered differently")
        return None
    log.info("serving the torch.export program through its traced (TorchScript) form")
    return traced


def _example_inputs(program: Any, device: str, rows: int) -> tuple[Any, ...]:
    """Random inputs of the program's dtypes and shapes; `rows` for its first (batch) dimension."""
    import torch

    user_inputs = set(program.graph_signature.user_inputs)
    inputs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            fake = node.meta["val"]
            shape = [rows] + [d if isinstance(d, int) else 2 for d in fake.shape[1:]]
            if fake.dtype.is_floating_point:
                inputs.append(torch.randn(shape, dtype=fake.dtype, device=device))
            else:
                inputs.append(torch.zeros(shape, dtype=fake.dtype, device=device))
    return tuple(inputs)


def _same_outputs(left: Any, right: Any) -> bool:
    import torch

    if isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor):
        return left.shape == right.shape and bool(torch.allclose(left, right, rtol=1e-4, atol=1e-5))
    if isinstance(left, (tuple, list)) and isinstance(right, (tuple, list)) and len(left) == len(right):
        return all(_same_outputs(a, b) for a, b in zip(left, right))
    if isinstance(left, dict) and isinstance(right, dict) and left.keys() == right.keys():
        return all(_same_outputs(left[k], right[k]) for k in left)
    return False


def load_handler_class(spec: str, base_dir: Path) -> type[Handler]:
    """Import `package.module:Class` or `relative/file.py:Class` (relative to the config file)."""
    module, module_name, class_name = import_named(spec, base_dir, "handler")
    handler_class = getattr(module, class_name, None)
    if handler_class is None:
        raise StartupError(f"handler {spec!r}: {module_name} has no attribute {class_name!r}{_classes_hint(module)}")
    if not (isinstance(handler_class, type) and issubclass(handler_class, Handler)):
        raise StartupError(f"handler {spec!r}: {class_name} is not a subclass of inferd.Handler")
    return handler_class


def _classes_hint(module: Any) -> str:
    names = [
        name for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, Handler) and value is not Handler
    ]  # fmt: skip
    return f" (its Handler subclasses: {', '.join(sorted(names))})" if names else " (it defines no Handler subclass)"
