"""A pipeline's executor: one request through several served models of the same config.

Each step is submitted to its own model's batcher, exactly as a route would submit it, so items of
different requests batch together at every step, every step retries a lost worker's batch once,
and every step keeps its own metrics. Invariants:
- data between steps stays numpy arrays or Python items (never JSON); a hop from items to a tensor
  stacks them once (one item: a view of it), a hop from a tensor to items takes views of its rows;
  a big tensor that a step's worker put in a segment goes on to the next step's worker as that
  segment (inferd/segments.py): the main process copies none of its bytes;
- steps whose inputs are ready run at once (a fan-out runs its branches side by side); the first
  step to fail cancels the others and answers the request with its own status and the step's name;
- the pipeline's `request_timeout_ms` bounds the whole request, and a client that leaves cancels
  every step still queued (a step's batch already running finishes, its answer dropped);
- steps are looked up per request, so a reload that replaces a step's model changes it at once;
- each step that answers is timed as part of its pipeline (inferd/pipeline_metrics.py).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from inferd.batching import Batcher
from inferd.composed_workers import ComposedWorkers
from inferd.datatypes import numpy_dtype
from inferd.errors import ModelUnavailable, RequestError, RequestTimedOut
from inferd.inflight import InFlight
from inferd.messages import Items, PackedItems, Payload, TensorInfo
from inferd.pipeline_graph import PIPELINE_INPUT, run_order
from inferd.pipeline_metrics import StepObserver

if TYPE_CHECKING:
    from inferd.config import ModelConfig, PipelineStep
    from inferd.daemon import ServedModel

Lookup = Callable[[str], "ServedModel | None"]


class StepOutputsDoNotFit(RequestError):
    """A step's outputs cannot become the next step's inputs (e.g. items of different shapes)."""

    status = 500


class PipelineExecutor:
    """What a pipeline's route submits to, in place of a batcher."""

    def __init__(self, config: ModelConfig, lookup: Lookup, step_done: StepObserver | None = None) -> None:
        assert config.pipeline is not None
        self.name = config.name
        self.steps = run_order(config.pipeline)
        self.entry_step = next(s for s in config.pipeline if PIPELINE_INPUT in (s.after or ()))
        self.last_step = config.pipeline[-1]
        self.timeout_s = config.request_timeout_ms / 1000
        self.is_chain = all(
            step.after == ((str(before.id),) if before else (PIPELINE_INPUT,))
            for before, step in zip((None, *config.pipeline), config.pipeline)
        )
        self._lookup = lookup
        # The steps that take one step's outputs and nothing else, by that step's id.
        self._takers: dict[str, list[PipelineStep]] = {}
        for later in self.steps:
            sources = later.after or ()
            if len(sources) == 1 and sources[0] != PIPELINE_INPUT:
                self._takers.setdefault(str(sources[0]), []).append(later)
        self._step_done = step_done or (lambda step, duration_s: None)
        self._inflight = InFlight()

    @property
    def inflight_requests(self) -> int:
        return self._inflight.count

    @property
    def queue_depth(self) -> int:
        return 0  # a pipeline queues nothing itself: its steps' queues hold its requests

    def start(self) -> None:
        """Nothing to start: the steps' models start themselves."""

    async def drain(self, timeout_s: float) -> None:
        await self._inflight.ended(timeout_s)

    async def stop(self) -> None:
        """Nothing to stop: requests in flight end with their steps."""

    def model_of(self, step: PipelineStep) -> ServedModel | None:
        return self._lookup(step.model)

    async def infer(self, payload: Payload, items: int, key: Hashable, priority: int = 0) -> Payload:
        """The last step's outputs for one request, or the RequestError of the step that failed;
        every step queues it at `priority` (each step's model maps it onto its own levels)."""
        with self._inflight.one():
            try:
                if sys.version_info >= (3, 11):  # a deadline on this task, without wait_for's extra task
                    async with asyncio.timeout(self.timeout_s):
                        return await self._run(payload, priority)
                return await asyncio.wait_for(self._run(payload, priority), self.timeout_s)
            except asyncio.TimeoutError:
                timeout_ms = self.timeout_s * 1000
                raise RequestTimedOut(
                    f"pipeline {self.name!r} did not answer within {timeout_ms:g} ms (request_timeout_ms)"
                ) from None

    async def _run(self, payload: Payload, priority: int) -> Payload:
        if self.is_chain:  # each step in turn on this task: no task per step to make and wait on
            for step in self.steps:
                payload = await self._submit(step, [payload], priority)
            return payload
        return await self._run_graph(payload, priority)

    async def _run_graph(self, payload: Payload, priority: int) -> Payload:
        request: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
        request.set_result(payload)
        done: dict[str, asyncio.Future[Payload]] = {PIPELINE_INPUT: request}
        tasks = []
        for step in self.steps:  # in run order: every source is already in `done`
            task = asyncio.ensure_future(self._step(step, [done[name] for name in step.after or ()], priority))
            done[str(step.id)] = task
            tasks.append(task)
        try:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            errors = [error for task in finished if not task.cancelled() and (error := task.exception())]
            if errors:
                raise errors[0]
            return done[str(self.last_step.id)].result()
        finally:  # a failed step, a deadline or a client gone: no other step goes on
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _step(self, step: PipelineStep, sources: list[asyncio.Future[Payload]], priority: int) -> Payload:
        return await self._submit(step, [await source for source in sources], priority)

    async def _submit(self, step: PipelineStep, given: list[Payload], priority: int) -> Payload:
        started = time.perf_counter()
        answer = await self._submit_untimed(step, given, priority)
        self._step_done(str(step.id), time.perf_counter() - started)
        return answer

    async def _submit_untimed(self, step: PipelineStep, given: list[Payload], priority: int) -> Payload:
        model = self.model_of(step)
        if model is None:
            raise ModelUnavailable(f"pipeline {self.name!r}: step {step.id!r}: model {step.model!r} is not served")
        try:
            data, items, key = step_input(given, model.is_handler, model.inputs, [str(s) for s in step.after or ()])
        except (ValueError, TypeError) as error:
            raise StepOutputsDoNotFit(
                f"pipeline {self.name!r}: step {step.id!r} cannot take its inputs: {error}"
            ) from None
        self._warn_successors(step, model, items)
        try:
            return await model.batcher.infer(data, items, key, priority)
        except RequestError as error:
            raise _named(error, f"pipeline {self.name!r}: step {step.id!r}: ") from None

    def _warn_successors(self, step: PipelineStep, model: ServedModel, items: int) -> None:
        """Tell each step that takes this step's outputs alone when they are due, from this step's
        learned batch time: its worker is then awake when they come (Batcher.expect)."""
        successors = self._takers.get(str(step.id))
        if not successors or not isinstance(model.batcher, Batcher):
            return  # the last step, or one that only a join takes: nothing to estimate
        expected_s = model.batcher.cost.estimate_s(items)
        if expected_s is None:
            return
        for successor in successors:
            taker = self.model_of(successor)
            if taker is not None and isinstance(taker.batcher, Batcher):
                taker.batcher.expect(expected_s)


def _named(error: RequestError, prefix: str) -> RequestError:
    named = type(error)(prefix + error.message, error.headers, error.fields, error.detail)
    named.status = error.status
    return named


def step_input(
    given: list[Payload], to_handler: bool, inputs: tuple[TensorInfo, ...], names: list[str]
) -> tuple[Payload, int, Hashable]:
    """What one step submits: the outputs it takes (joined by name when several), as items for a
    handler or as named arrays for a tensor model, with the row count and batch key."""
    if to_handler:
        items = _as_items(given, names)
        return items, len(items), None
    arrays = _as_arrays(given, inputs)
    rows = {len(array) for array in arrays.values()}
    if len(rows) != 1:
        raise ValueError(f"the outputs it takes have different row counts {sorted(rows)}")
    key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in arrays.items())
    return arrays, rows.pop(), key


def _as_items(given: list[Payload], names: list[str]) -> list[Any]:
    columns = [_items_of(payload) for payload in given]
    if len(columns) == 1:
        return columns[0]
    if len({len(column) for column in columns}) != 1:
        raise ValueError(f"the steps it joins gave different item counts {[len(c) for c in columns]}")
    return [_join(list(parts), names) for parts in zip(*columns)]


def _items_of(payload: Payload) -> list[Any]:
    if isinstance(payload, PackedItems):  # a request's own items, joined with a step's output
        payload = payload.unpack()
    if isinstance(payload, Items):  # a request's items with parameters: the steps take the items
        return payload.values
    return payload if isinstance(payload, list) else _rows_of(payload)


def _rows_of(arrays: dict[str, np.ndarray]) -> list[Any]:
    """A tensor's rows as items: views, not copies; several outputs give one mapping per row."""
    if len(arrays) == 1:
        return list(next(iter(arrays.values())))
    rows = len(next(iter(arrays.values())))
    return [{name: array[row] for name, array in arrays.items()} for row in range(rows)]


def _join(parts: list[Any], names: list[str]) -> dict[str, Any]:
    """One item of several steps' outputs: mappings merged by name, other values under the step's id."""
    joined: dict[str, Any] = {}
    for part, name in zip(parts, names):
        joined.update(part if isinstance(part, dict) else {name: part})
    return joined


def _as_arrays(given: list[Payload], inputs: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    merged: dict[str, np.ndarray] = {}
    for payload in given:
        merged.update(payload if isinstance(payload, dict) else _stack(_items_of(payload)))
    if len(inputs) == 1 and len(merged) == 1:
        merged = {inputs[0].name: next(iter(merged.values()))}  # one to one: by position, whatever the name
    missing = [spec.name for spec in inputs if spec.name not in merged]
    if missing:
        raise ValueError(f"the model takes inputs {missing}, which no step before it gives (given: {sorted(merged)})")
    return {spec.name: _cast(merged[spec.name], spec.datatype) for spec in inputs}


def _stack(items: list[Any]) -> dict[str, np.ndarray]:
    """Items (arrays, or mappings of arrays) stacked into a batch: the one copy of this hop, none
    for one item (a view of it, which a segment's channel forwards to the next worker as is)."""
    if items and all(isinstance(item, dict) for item in items):
        return {name: _stacked([item[name] for item in items]) for name in items[0]}
    return {"output": _stacked(items)}


def _stacked(items: list[Any]) -> np.ndarray:
    if len(items) == 1:
        return np.asarray(items[0])[np.newaxis]
    return np.stack([np.asarray(item) for item in items])


def _cast(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype in ("BYTES", "BF16"):
        return array
    wanted = numpy_dtype(datatype)
    return array if array.dtype == wanted else array.astype(wanted)


def pipeline_steps(executor: PipelineExecutor) -> ComposedWorkers:
    """A pipeline's stand-in for a supervisor: ready while every step's model has a ready worker."""
    return ComposedWorkers(
        lambda: [(f"step {s.id!r}: model {s.model!r}", executor.model_of(s)) for s in executor.steps]
    )
