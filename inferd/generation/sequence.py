"""One running sequence inside a worker: what the handler's `step` reads and writes, and the
stop rules (end token, max_tokens, stop strings) applied after each step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inferd.messages import Chunk, Sampling

REPLACEMENT_CHAR = "\ufffd"  # a token that ends mid-character: its text waits for the next token


@dataclass
class Sequence:
    sequence_id: int
    prompt_tokens: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    tokens: list[int] = field(default_factory=list)  # generated so far, end token excluded
    cache: Any = None  # the handler's own per-sequence state (a KV cache); None until prefilled
    generator: Any = None  # a seeded torch.Generator, made on first sampling
    sent_chars: int = 0  # how much of the text has gone out
    sent_tokens: int = 0
    first_chunk_sent: bool = False

    def chunk(self, text: str, finish_reason: str | None) -> Chunk:
        """The chunk for this step: the text not yet sent, holding back what could still turn
        out to be the start of a stop string or a character cut in two."""
        if finish_reason is None:
            text = text[: len(text) - self._hold_back(text)]
        new_text, self.sent_chars = text[self.sent_chars :], max(self.sent_chars, len(text))
        new_tokens, self.sent_tokens = len(self.tokens) - self.sent_tokens, len(self.tokens)
        prompt_tokens = None if self.first_chunk_sent else len(self.prompt_tokens)
        self.first_chunk_sent = True
        return Chunk(self.sequence_id, new_text, new_tokens, prompt_tokens, finish_reason)

    def _hold_back(self, text: str) -> int:
        if text.endswith(REPLACEMENT_CHAR):
            return len(text) - len(text.rstrip(REPLACEMENT_CHAR))
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def cut_at_stop(self, text: str) -> str | None:
        """The text before the first stop string, or None where none occurs."""
        found = [i for i in (text.find(stop) for stop in self.stop) if i >= 0]
        return text[: min(found)] if found else None
