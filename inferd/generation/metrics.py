"""The generative models' metrics, in the daemon's one registry: time to first token and time per
output token (histograms), prompt and generated token counters, and, read at scrape time, the
sequences running in workers and those queued."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from inferd.daemon import ServedModel

# Time per output token spans sub-millisecond (a tiny model) to a second (a large one on CPU).
TOKEN_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GenerationMetrics:
    def __init__(
        self, registry: CollectorRegistry, latency_buckets_s: tuple[float, ...],
        models: Callable[[], Mapping[str, ServedModel]],
    ) -> None:  # fmt: skip
        self.time_to_first_token = Histogram(
            "inferd_time_to_first_token_seconds", "From arrival to the first generated token.",
            ["model"], buckets=latency_buckets_s, registry=registry,
        )  # fmt: skip
        self.time_per_output_token = Histogram(
            "inferd_time_per_output_token_seconds", "Mean time between a sequence's tokens after its first.",
            ["model"], buckets=TOKEN_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter("inferd_prompt_tokens", "Prompt tokens prefilled.", ["model"], registry=registry)
        self.generated_tokens = Counter("inferd_generated_tokens", "Tokens generated.", ["model"], registry=registry)
        self.cancelled = Counter(
            "inferd_sequences_cancelled", "Sequences stopped before their end (client gone, deadline).",
            ["model"], registry=registry,
        )  # fmt: skip
        registry.register(SequenceCollector(models))

    def for_model(self, model: str) -> ModelGenerationMetrics:
        return ModelGenerationMetrics(self, model)

    def for_streams(self, model: str) -> StreamMetrics:
        return StreamMetrics(self, model)


class ModelGenerationMetrics:
    """One model's generation figures (the scheduler's observer)."""

    def __init__(self, metrics: GenerationMetrics, model: str) -> None:
        self._first_token = metrics.time_to_first_token.labels(model)
        self._per_token = metrics.time_per_output_token.labels(model)
        self._prompt_tokens = metrics.prompt_tokens.labels(model)
        self._generated_tokens = metrics.generated_tokens.labels(model)
        self._cancelled = metrics.cancelled.labels(model)

    def first_token(self, wait_s: float, prompt_tokens: int) -> None:
        self._first_token.observe(wait_s)
        self._prompt_tokens.inc(prompt_tokens)

    def sequence_done(self, tokens: int, decode_s: float) -> None:
        self._generated_tokens.inc(tokens)
        if tokens > 1:
            self._per_token.observe(decode_s / (tokens - 1))

    def request_cancelled(self) -> None:
        self._cancelled.inc()


class StreamMetrics:
    """A handler model's streamed requests: only their cancellations, counted once one happens
    (a handler's chunks are no tokens, and most handler models never stream)."""

    def __init__(self, metrics: GenerationMetrics, model: str) -> None:
        self._cancelled = metrics.cancelled
        self._model = model

    def first_token(self, wait_s: float, prompt_tokens: int) -> None:
        pass

    def sequence_done(self, tokens: int, decode_s: float) -> None:
        pass

    def request_cancelled(self) -> None:
        self._cancelled.labels(self._model).inc()


class SequenceCollector(Collector):
    def __init__(self, models: Callable[[], Mapping[str, ServedModel]]) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "inferd_running_sequences", "Sequences in workers' running batches.", labels=["model"]
        )
        queued = GaugeMetricFamily("inferd_queued_sequences", "Sequences waiting for a slot.", labels=["model"])
        for name, model in self._models().items():
            if model.generator is not None:
                running.add_metric([name], model.generator.running_sequences)
                queued.add_metric([name], model.generator.queue_depth)
        yield running
        yield queued
