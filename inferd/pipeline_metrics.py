"""Each pipeline step's time as part of its pipeline, in the daemon's one registry:
`inferd_pipeline_step_seconds{model=<pipeline>, step=<step id>}`, from the step's submission to its
answer (the hop's conversion, its queue, batch and compute on its own model), for each step that
answered. The step's model keeps its own series too; this one tells which step of which pipeline
the time went to, where a model serves several pipelines."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram

StepObserver = Callable[[str, float], None]  # step id, seconds


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry, latency_buckets_s: tuple[float, ...]) -> None:
        self.step_duration = Histogram(
            "inferd_pipeline_step_seconds", "Time of each pipeline step, from its submission to its answer.",
            ["model", "step"], buckets=latency_buckets_s, registry=registry,
        )  # fmt: skip

    def for_pipeline(self, pipeline: str, steps: list[str]) -> StepObserver:
        """One pipeline's observer, with each step's series bound once."""
        series = {step: self.step_duration.labels(pipeline, step) for step in steps}

        def step_done(step: str, duration_s: float) -> None:
            series[step].observe(duration_s)

        return step_done
