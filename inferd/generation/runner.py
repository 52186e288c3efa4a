"""The worker side of a generative model: a continuous batch driven one step at a time.

`start` admits a sequence (tokenizing its prompt and checking it against max_prompt_tokens before
any compute); it joins the batch at the next step. Each step (`steps`) calls the handler for every
running sequence, applies the stop rules and answers one Chunk per sequence; a sequence that
ended (end token, max_tokens, a stop string, cancelled) leaves the batch in that same step.

Where sequences joined, a step is several handler calls, each one's chunks sent before the next:
the newcomers' prefill first, in passes of at most `prefill_tokens_per_pass` prompt tokens, then
the decode of the sequences that were running. A newcomer's first token waits for its own pass
only, never for the running batch's decode nor for the prefill of every prompt that came with it
(bench/generation_steps.py measures why: a pass over one prompt costs about as much as a decode
step, the weights' reading dominating, and a pass over k prompts grows with k). Each pass's time
feeds `arrival_hold`: how long the worker, idle, waits for a burst's other sequences.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from inferd.config import ModelConfig
from inferd.errors import StartupError
from inferd.generation.arrival_hold import ArrivalHold
from inferd.generation.sequence import Sequence
from inferd.handler import GenerativeHandler, load_handler_class
from inferd.messages import Batch, BatchDone, Chunk, Generate, RequestFailure, TensorInfo
from inferd.runners import caller_message, traceback_line

log = logging.getLogger(__name__)


class GenerationRunner:
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()

    def __init__(self, model: ModelConfig, device: str, base_dir: Path) -> None:
        assert model.handler is not None
        handler_class = load_handler_class(model.handler, base_dir)
        if not issubclass(handler_class, GenerativeHandler):
            raise StartupError(
                f"{model.handler}: a model with a 'generation' section needs a GenerativeHandler subclass"
            )
        self.model_name = model.name
        assert model.generation is not None
        self.prefill_tokens_per_pass = model.generation.prefill_tokens_per_pass
        self.handler: GenerativeHandler = handler_class(**model.handler_args)
        self.handler.setup(device)
        self.end_tokens = self.handler.end_tokens()
        self.running: dict[int, Sequence] = {}
        self.arrival_hold = ArrivalHold()  # the worker's wait for more newcomers when it is idle

    def start(self, message: Generate) -> Chunk | None:
        """Admit a sequence; a Chunk with a failure where its prompt is refused."""
        try:
            prompt_tokens = self.handler.tokenize(message.prompt)
        except Exception as error:
            return Chunk(message.sequence_id, failure=_failure(error, bad_input=isinstance(error, ValueError)))
        if len(prompt_tokens) > message.max_prompt_tokens:
            text = f"the prompt has {len(prompt_tokens)} tokens; this model takes at most {message.max_prompt_tokens}"
            return Chunk(message.sequence_id, failure=RequestFailure("PromptTooLong", text))
        sequence = Sequence(message.sequence_id, prompt_tokens, message.max_tokens, message.sampling, message.stop)
        self.running[message.sequence_id] = sequence
        return None

    def answer_batch(self, batch: Batch) -> BatchDone:
        """A predict route's batch: refused, this model only generates."""
        model = self.model_name
        text = f"model {model!r} generates text: POST /models/{model}/generate or /v1/completions"
        return BatchDone(batch.batch_id, [RequestFailure("NotGenerated", text)] * len(batch.payloads), 0.0)

    def cancel(self, sequence_id: int) -> None:
        sequence = self.running.pop(sequence_id, None)
        if sequence is not None:
            self.handler.release(sequence)

    def steps(self) -> Iterator[list[Chunk]]:
        """One step's chunks, in the parts that go out one after the other."""
        running = [s for s in self.running.values() if s.cache is not None]
        for part in self._prefill_passes([s for s in self.running.values() if s.cache is None]):
            started = time.perf_counter()
            yield self.step([s for s in part if s.sequence_id in self.running])
            self.arrival_hold.observe_prefill(time.perf_counter() - started)
        if running:
            yield self.step([s for s in running if s.sequence_id in self.running])

    def _prefill_passes(self, joining: list[Sequence]) -> list[list[Sequence]]:
        """The newcomers in arrival order, cut into passes of at most prefill_tokens_per_pass."""
        passes: list[list[Sequence]] = []
        tokens = 0
        for sequence in joining:
            size = len(sequence.prompt_tokens)
            if not passes or tokens + size > self.prefill_tokens_per_pass:
                passes.append([])
                tokens = 0
            passes[-1].append(sequence)
            tokens += size
        return passes

    def step(self, sequences: list[Sequence]) -> list[Chunk]:
        if not sequences:
            return []
        try:
            next_tokens = list(self.handler.step(sequences))
            if len(next_tokens) != len(sequences):
                raise RuntimeError(f"step returned {len(next_tokens)} tokens for {len(sequences)} sequences")
        except Exception as error:
            log.warning("a step over %d sequence(s) raised: %s", len(sequences), traceback_line(error))
            return [self._end_with(sequence, _failure(error, bad_input=False)) for sequence in sequences]
        return [self._advance(sequence, token) for sequence, token in zip(sequences, next_tokens)]

    def _advance(self, sequence: Sequence, token: int) -> Chunk:
        finish_reason = None
        if token in self.end_tokens:
            finish_reason = "stop"
        else:
            sequence.tokens.append(token)
        text = self.handler.detokenize(sequence.tokens)
        if sequence.stop and (before_stop := sequence.cut_at_stop(text)) is not None:
            text, finish_reason = before_stop, "stop"
        if finish_reason is None and len(sequence.tokens) >= sequence.max_tokens:
            finish_reason = "length"
        chunk = sequence.chunk(text, finish_reason)
        if finish_reason is not None:
            self.cancel(sequence.sequence_id)
        return chunk

    def _end_with(self, sequence: Sequence, failure: RequestFailure) -> Chunk:
        self.cancel(sequence.sequence_id)
        return Chunk(sequence.sequence_id, failure=failure)


def _failure(error: Exception, bad_input: bool) -> RequestFailure:
    return RequestFailure(type(error).__name__, caller_message(error), bad_input, traceback_line(error))
