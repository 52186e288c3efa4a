"""A running batch's key/value cache kept in place, for handlers of attention models (worker side:
it imports torch).

One buffer holds every running sequence's keys and values, `[layers, 2, rows, kv_heads,
positions, head_dim]`. Each sequence owns one row (a `Slot`) from its prefill until it is
released; its tokens sit at positions `0 .. length-1` of that row. A decode step writes each
sequence's new key and value at its own next position and attends over positions `0 .. longest`
of the rows, a mask marking each row's unused tail, so the step costs one forward and no copy of
the cache.

Invariants:
- the running slots hold rows `0 .. n-1` with no gap: releasing a row moves the last row into it
  (one row's copy), so a step over every running sequence reads the buffer's first n rows as they
  are (a view);
- the buffer grows (rows doubling, positions in chunks) only when a step needs more than it has,
  copying what is in use once; it starts zeroed, so positions outside any sequence hold finite
  values, which masked attention multiplies by zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

POSITION_CHUNK = 64  # positions added at a time: a copy of the cache every 64 steps at most


@dataclass
class Slot:
    """A sequence's row of the buffer and how many positions of it hold its tokens."""

    row: int
    length: int


class SlotCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.buffer = self._zeros(rows=1, positions=POSITION_CHUNK)
        self.slots: list[Slot] = []  # by row

    @torch.inference_mode()  # the buffer is an inference tensor: written in and out of a forward
    def _zeros(self, rows: int, positions: int) -> torch.Tensor:
        shape = (self.layers, 2, rows, self.kv_heads, positions, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    @property
    def rows(self) -> int:
        return self.buffer.shape[2]

    @property
    def positions(self) -> int:
        return self.buffer.shape[4]

    @torch.inference_mode()
    def admit(self, keys_and_values: list[tuple[torch.Tensor, torch.Tensor]], row: int, start: int) -> Slot:
        """A new slot holding the prefilled positions `start:` of batch row `row` of each layer's
        (keys, values), shaped [batch, kv_heads, positions, head_dim] (a left-padded prefill)."""
        length = keys_and_values[0][0].shape[2] - start
        self._reserve(len(self.slots) + 1, length)
        slot = Slot(len(self.slots), length)
        for layer, (keys, values) in enumerate(keys_and_values):
            self.buffer[layer, 0, slot.row, :, :length] = keys[row, :, start:]
            self.buffer[layer, 1, slot.row, :, :length] = values[row, :, start:]
        self.slots.append(slot)
        return slot

    @torch.inference_mode()
    def release(self, slot: Slot) -> None:
        """Free `slot`'s row, moving the last running row into it."""
        last = self.slots.pop()
        if last is not slot:
            self.buffer[:, :, slot.row, :, : last.length] = self.buffer[:, :, last.row, :, : last.length]
            last.row = slot.row
            self.slots[slot.row] = last

    def step(self, slots: list[Slot]) -> DecodeStep:
        """The cache one decode step over `slots` (in that order) reads and writes."""
        self._reserve(len(self.slots), max(slot.length for slot in slots) + 1)
        return DecodeStep(self, slots)

    @torch.inference_mode()
    def _reserve(self, rows: int, positions: int) -> None:
        if rows <= self.rows and positions <= self.positions:
            return
        rows = self.rows if rows <= self.rows else max(rows, 2 * self.rows)
        positions = max(self.positions, -(-positions // POSITION_CHUNK) * POSITION_CHUNK)
        grown = self._zeros(rows, positions)
        longest = max((slot.length for slot in self.slots), default=0)
        used = len(self.slots)
        grown[:, :, :used, :, :longest] = self.buffer[:, :, :used, :, :longest]
        self.buffer = grown


class DecodeStep:
    """What the model's attention layers call (`update`) in one decode step: each sequence's new
    key and value go to its row's next position; the layer attends over the rows' first
    `longest + 1` positions, `mask` hiding each row's positions past its own. `positions` is each
    sequence's next position, its rotary position id. `advance` counts the step once it is done."""

    def __init__(self, cache: SlotCache, slots: list[Slot]) -> None:
        self.cache, self.slots = cache, slots
        device = cache.device
        self.rows = torch.tensor([slot.row for slot in slots], device=device)
        self.lengths = torch.tensor([slot.length for slot in slots], device=device)
        self.span = max(slot.length for slot in slots) + 1
        # Every running row, in order: the rows are the buffer's first n, read without a copy.
        self.in_place = [slot.row for slot in slots] == list(range(len(cache.slots)))
        self.mask = (torch.arange(self.span, device=device)[None, :] <= self.lengths[:, None])[:, None, None, :]
        self.positions = self.lengths[:, None]

    @torch.inference_mode()
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *_: Any, **__: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.buffer[layer_idx]
        keys[self.rows, :, self.lengths] = key_states[:, :, 0]
        values[self.rows, :, self.lengths] = value_states[:, :, 0]
        if self.in_place:
            count = len(self.slots)
            return keys[:count, :, : self.span], values[:count, :, : self.span]
        return keys[self.rows, :, : self.span], values[self.rows, :, : self.span]

    def advance(self) -> None:
        for slot in self.slots:
            slot.length += 1
