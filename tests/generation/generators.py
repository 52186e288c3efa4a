"""Tiny generative handlers for tests: deterministic, no real model. Tokens are the prompt's
characters (code points); the answer is the prompt in capitals, then the end token (0).

Prompts that start with a word change the behaviour: "forever:" cycles its capitals until
max_tokens; "die:" makes the worker exit after its third token (a crash mid-stream); "diefirst:"
makes it exit in the sequence's first step, before it made anything."""

from __future__ import annotations

import os
import time
from typing import Any

from inferd import GenerativeHandler

END = 0


class Capitals(GenerativeHandler):
    def setup(self, device: str) -> None:
        self.step_delay_s = float(self.handler_args.get("step_delay_s", 0.0))

    def tokenize(self, prompt: str | list[dict[str, str]]) -> list[int]:
        if isinstance(prompt, list):  # a "chat template": the last message's content
            prompt = prompt[-1]["content"]
        if not prompt:
            raise ValueError("the prompt is empty")
        return [ord(c) for c in prompt]

    def detokenize(self, tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens)

    def end_tokens(self) -> frozenset[int]:
        return frozenset({END})

    def step(self, sequences: list[Any]) -> list[int]:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        return [self._next(sequence) for sequence in sequences]

    def _next(self, sequence: Any) -> int:
        if sequence.cache is None:  # "prefill": the answer this sequence will give
            sequence.cache = self.detokenize(sequence.prompt_tokens).upper()
        answer, made = sequence.cache, len(sequence.tokens)
        if (answer.startswith("DIE:") and made == 3) or (answer.startswith("DIEFIRST:") and made == 0):
            os._exit(1)
        if answer.startswith("FOREVER:"):
            return ord(answer[made % len(answer)])
        return ord(answer[made]) if made < len(answer) else END


class BrokenStep(Capitals):
    """Raises in every step: the model's own bug, not the caller's."""

    def step(self, sequences: list[Any]) -> list[int]:
        raise RuntimeError("the step is broken")
