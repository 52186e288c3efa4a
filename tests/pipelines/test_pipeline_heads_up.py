"""A pipeline's step warns the steps that take its outputs alone when they are due (Batcher.expect),
so their idle workers poll for the batch instead of being woken by it; a join, which waits for
several steps, is not warned. Real batchers and executor on a real loop, in-memory workers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from inferd.batching import Batcher
from inferd.config import check_config_text
from inferd.pipeline import PipelineExecutor
from tests.test_batching import FakeWorker, make

HANDLERS = "".join(f"  - {{name: {name}, handler: steps.py:Echo}}\n" for name in ("a", "b", "c", "j"))


def served(pipeline: str) -> tuple[PipelineExecutor, dict[str, FakeWorker], list[Batcher]]:
    check = check_config_text(f"models:\n{HANDLERS}{pipeline}")
    assert check.problems == () and check.config is not None
    workers: dict[str, FakeWorker] = {}
    models: dict[str, Any] = {}
    batchers = []
    for model in check.config.models[:-1]:
        workers[model.name] = FakeWorker(model.name, delay_s=0.002)
        batcher, _, _ = make([workers[model.name]], busy_poll_s=0.001)
        batcher.cost.observe(1, 0.002)  # a learned batch time: 2 ms
        batchers.append(batcher)
        models[model.name] = SimpleNamespace(is_handler=True, inputs=(), batcher=batcher)
    return PipelineExecutor(check.config.models[-1], models.get), workers, batchers


async def test_each_step_of_a_chain_warns_the_next() -> None:
    executor, workers, batchers = served("  - {name: p, pipeline: [a, b, c]}\n")
    assert await executor.infer(["x"], 1, None) == ["x"]
    assert [len(workers[name].heads_ups) for name in "abc"] == [0, 1, 1]
    for batcher in batchers:
        await batcher.stop()


async def test_a_fan_out_warns_its_branches_and_a_join_is_not_warned() -> None:
    executor, workers, batchers = served(
        """  - name: p
    pipeline:
      - {model: a, after: input}
      - {model: b, after: a}
      - {model: c, after: a}
      - {model: j, after: [b, c]}
"""
    )
    await executor.infer(["x"], 1, None)
    assert {name: len(worker.heads_ups) for name, worker in workers.items()} == {"a": 0, "b": 1, "c": 1, "j": 0}
    for batcher in batchers:
        await batcher.stop()
