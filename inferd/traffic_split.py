"""A traffic split's router: what a split's route submits to, in place of a batcher.

Each request goes, whole, to one variant's own batcher (a model, one version of it, or a
pipeline), so it batches, retries and is measured there as any request of that model. Invariants:
- without a key, variants take turns by smooth weighted round robin (nginx's): over any run of
  requests each variant's count stays within one request of its weight's share, with no randomness;
- with the configured key header, the variant is a function of the key's hash and the weights
  (nothing is stored): the same key lands on the same variant while the weights stand, and a
  weight change moves only the keys whose hash falls in the part of the range that changed hands;
- the answering variant is written into the request's note (inferd/request_note.py) for the
  front to name in `X-Inferd-Variant`;
- a shadow copy never delays or fails the primary: it runs on a task of its own, its answer is
  discarded, and it is dropped (never queued) when the candidate is saturated;
- variants are looked up per request, so a reload that replaces a variant's model uses it at once,
  and a reload that changes the weights builds a new router while the old one finishes its requests.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from inferd.composed_workers import ComposedWorkers
from inferd.errors import ModelUnavailable, RequestError
from inferd.inflight import InFlight
from inferd.messages import Payload
from inferd.request_note import NOTE, RequestNote, current_note

if TYPE_CHECKING:
    from inferd.config import ModelConfig, ShadowConfig, SplitVariant
    from inferd.daemon import ServedModel
    from inferd.traffic_metrics import TrafficMetrics

log = logging.getLogger(__name__)

Lookup = Callable[[str, "str | None"], "ServedModel | None"]
_HASH_RANGE = float(2**64)


class WeightedTurns:
    """Smooth weighted round robin: each turn every variant gains its weight, the one with the
    most credit answers and pays the total. Zero weights never answer."""

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = tuple(weights)
        self._total = sum(weights)
        self._credit = [0.0] * len(weights)

    def next(self) -> int:
        for index, weight in enumerate(self._weights):
            self._credit[index] += weight
        chosen = max(range(len(self._weights)), key=self._credit.__getitem__)
        self._credit[chosen] -= self._total
        return chosen


def sticky_index(key: bytes, weights: Sequence[float]) -> int:
    """The variant a key lands on: its hash as a point in [0, total weight), in cumulative order."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    bounds = list(itertools.accumulate(weights))
    point = int.from_bytes(digest, "big") / _HASH_RANGE * bounds[-1]
    return min(bisect.bisect_right(bounds, point), len(bounds) - 1)


class SplitRouter:
    def __init__(self, config: ModelConfig, lookup: Lookup, metrics: TrafficMetrics) -> None:
        split = config.split
        assert split is not None
        self.name = config.name
        self.variants = split.variants
        self.weights = tuple(variant.weight for variant in split.variants)
        # The heaviest variant speaks for the split where one model's inputs and outputs are asked.
        self.entry_step = self.last_step = max(split.variants, key=lambda variant: variant.weight)
        self._turns = WeightedTurns(self.weights)
        self._key_header = split.key_header.lower().encode("ascii") if split.key_header else None
        self._lookup = lookup
        self._metrics = metrics
        self.shadow = ShadowCopies(config.name, split.shadow, lookup, metrics) if split.shadow else None
        self._inflight = InFlight()

    @property
    def inflight_requests(self) -> int:
        return self._inflight.count

    @property
    def queue_depth(self) -> int:
        return 0  # a split queues nothing itself: its variants' queues hold its requests

    def model_of(self, variant: SplitVariant) -> ServedModel | None:
        return self._lookup(variant.model, variant.version)

    def choose(self, note: RequestNote | None) -> SplitVariant:
        key = note.header(self._key_header) if note is not None and self._key_header is not None else None
        index = sticky_index(key, self.weights) if key else self._turns.next()
        return self.variants[index]

    def start(self) -> None:
        """Nothing to start: the variants' models start themselves."""

    async def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        await self._inflight.ended(timeout_s)
        if self.shadow is not None:
            await self.shadow.drain(max(0.0, deadline - time.monotonic()))

    async def stop(self) -> None:
        if self.shadow is not None:
            await self.shadow.stop()

    async def infer(self, payload: Payload, items: int, key: Hashable, priority: int = 0) -> Payload:
        """The chosen variant's answer to this request (queued there at `priority`), or its RequestError."""
        note = current_note()
        variant = self.choose(note)
        if note is not None:
            note.variant = variant.label
        model = self.model_of(variant)
        if model is None:
            self._metrics.split_answered(self.name, variant.label, ModelUnavailable.status)
            raise ModelUnavailable(f"split {self.name!r}: variant {variant.label!r} is not served")
        if self.shadow is not None:
            self.shadow.offer(payload, items, key)
        return await self._answer(model, variant, payload, items, key, priority)

    async def _answer(
        self, model: ServedModel, variant: SplitVariant, payload: Payload, items: int, key: Hashable, priority: int
    ) -> Payload:
        code = 200
        with self._inflight.one():
            try:
                return await model.batcher.infer(payload, items, key, priority)
            except RequestError as error:
                code = error.status
                raise
            except asyncio.CancelledError:
                code = 499  # the client left (or the server stops)
                raise
            finally:
                self._metrics.split_answered(self.name, variant.label, code)


class ShadowCopies:
    """Copies of `share` of a split's requests to a candidate, answered into the void: only their
    latency and outcome (ok, error, dropped) are recorded."""

    def __init__(self, split: str, config: ShadowConfig, lookup: Lookup, metrics: TrafficMetrics) -> None:
        self._split = split
        self._config = config
        self._lookup = lookup
        self._metrics = metrics
        self._offered = 0
        self._copied = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def offer(self, payload: Payload, items: int, key: Hashable) -> None:
        """Copy this request if its turn has come (exactly `share` of requests, evenly spread)."""
        self._offered += 1
        if math.floor(self._offered * self._config.share + 1e-9) <= self._copied:
            return
        self._copied += 1
        model = self._lookup(self._config.model, self._config.version)
        if model is None or not model.workers.ready_count or self._saturated(model):
            self._metrics.shadow_dropped(self._split, self._config.label)
            return
        task = asyncio.get_running_loop().create_task(self._copy(model, payload, items, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _saturated(self, model: ServedModel) -> bool:
        """A full batch already waits at the candidate, or as many copies as it can hold are out."""
        batch = model.config.max_batch_size
        limit = self._config.max_inflight or 2 * batch * max(1, len(model.workers.handles))
        return model.batcher.queue_depth >= batch or len(self._tasks) >= limit

    async def _copy(self, model: ServedModel, payload: Payload, items: int, key: Hashable) -> None:
        NOTE.set(None)  # this task's own context: the copy must not name the primary's variant
        started = time.perf_counter()
        try:
            # The lowest priority: where the candidate serves traffic of its own, that goes first.
            await model.batcher.infer(payload, items, key, model.config.priority_levels)
            outcome = "ok"
        except RequestError as error:
            outcome = "error"
            log.debug("split %s: shadow %s failed: %s", self._split, self._config.label, error.message)
        self._metrics.shadow_done(self._split, self._config.label, outcome, time.perf_counter() - started)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def split_variants(router: SplitRouter) -> ComposedWorkers:
    """A split's stand-in for a supervisor: ready while every variant with weight has a ready worker."""
    return ComposedWorkers(
        lambda: [(f"variant {v.label!r}", router.model_of(v)) for v in router.variants if v.weight > 0]
    )
