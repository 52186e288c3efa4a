"""Running a handler whose `predict` is `async def`: each batch is a coroutine on one event loop
that the worker owns for its whole life (setup and warmup included), so whatever the handler binds
to its loop (a client session, say) stays valid while it serves. A batch that raises is run again
request by request, as `Runner.run_batch` does. Imported only in worker processes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from inferd.config import ModelConfig
from inferd.messages import Payload, RequestFailure
from inferd.runners import HandlerRunner, batch_failures, values_and_parameters


class AsyncHandlerRunner(HandlerRunner):
    def __init__(self, model: ModelConfig, device: str, base_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # before setup: what it makes may look up the current loop
        super().__init__(model, device, base_dir)

    def run_batch(self, payloads: list[Payload]) -> list[Payload | RequestFailure]:
        """One batch to its end (warmup): the serving loop awaits `run_batch_async` instead."""
        return self.loop.run_until_complete(self.run_batch_async(payloads))

    async def run_batch_async(self, payloads: list[Payload]) -> list[Payload | RequestFailure]:
        try:
            requests = [values_and_parameters(payload) for payload in payloads]
            items, parameters = self.decoded(requests)
            outputs = await self.predict(items, parameters)
            return list(self.split(requests, self.checked_outputs(items, list(outputs))))
        except Exception as error:
            failures = batch_failures(error, payloads)
            if failures is not None:
                return failures
            return [(await self.run_batch_async([payload]))[0] for payload in payloads]
