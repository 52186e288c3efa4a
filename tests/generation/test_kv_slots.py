"""The in-place cache of a running batch (inferd/generation/kv_slots.py) on small random tensors:
what a decode step's attention reads is each sequence's own keys and values, in its row, with a
mask over the row's unused tail, while sequences join, leave and the buffer grows."""

from __future__ import annotations

import torch

from inferd.generation.kv_slots import POSITION_CHUNK, Slot, SlotCache

LAYERS, HEADS, DIM = 2, 3, 4


def prefill(lengths: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A left-padded prefill's (keys, values) per layer for prompts of `lengths`."""
    shape = (len(lengths), HEADS, max(lengths), DIM)
    return [(torch.randn(shape), torch.randn(shape)) for _ in range(LAYERS)]


class Batch:
    """The cache beside a plain copy of what each sequence should hold (its keys, per layer)."""

    def __init__(self) -> None:
        self.cache = SlotCache(LAYERS, HEADS, DIM, torch.float32, torch.device("cpu"))
        self.expected: dict[int, list[torch.Tensor]] = {}  # id(slot) -> keys per layer
        self.slots: dict[str, Slot] = {}

    def join(self, names: list[str], lengths: list[int]) -> None:
        layers = prefill(lengths)
        for row, (name, length) in enumerate(zip(names, lengths)):
            slot = self.cache.admit(layers, row, max(lengths) - length)
            self.slots[name] = slot
            self.expected[id(slot)] = [keys[row, :, max(lengths) - length :] for keys, _ in layers]

    def leave(self, name: str) -> None:
        slot = self.slots.pop(name)
        self.cache.release(slot)
        del self.expected[id(slot)]

    def decode(self, names: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One step over `names`: per layer, the new keys given and the keys and mask read."""
        slots = [self.slots[name] for name in names]
        step = self.cache.step(slots)
        read = []
        for layer in range(LAYERS):
            new_keys = torch.randn(len(slots), HEADS, 1, DIM)
            keys, _ = step.update(new_keys, torch.randn_like(new_keys), layer)
            read.append((new_keys, keys, step.mask))
            for slot, key in zip(slots, new_keys):
                self.expected[id(slot)][layer] = torch.cat([self.expected[id(slot)][layer], key], dim=1)
        step.advance()
        return read

    def check(self, names: list[str], read: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        for layer, (_, keys, mask) in enumerate(read):
            for row, name in enumerate(names):
                own = self.expected[id(self.slots[name])][layer]
                length = own.shape[1]
                assert mask[row, 0, 0].tolist() == [True] * length + [False] * (keys.shape[2] - length)
                assert torch.equal(keys[row, :, :length], own)
                assert torch.isfinite(keys[row]).all()


def test_each_row_reads_its_own_prompt_and_tokens() -> None:
    batch = Batch()
    batch.join(["a", "b", "c"], [5, 2, 3])
    for _ in range(3):
        batch.check(["a", "b", "c"], batch.decode(["a", "b", "c"]))
    assert [batch.slots[n].length for n in "abc"] == [8, 5, 6]


def test_a_leaving_row_is_filled_by_the_last_and_nothing_else_moves() -> None:
    batch = Batch()
    batch.join(["a", "b", "c", "d"], [4, 3, 2, 5])
    batch.decode(["a", "b", "c", "d"])
    batch.leave("b")
    assert [batch.slots[n].row for n in "acd"] == [0, 2, 1]
    batch.leave("d")  # the last row itself: nothing to move
    assert [batch.slots[n].row for n in "ac"] == [0, 1]
    batch.join(["e"], [6])
    assert batch.slots["e"].row == 2
    names = ["a", "c", "e"]
    batch.check(names, batch.decode(names))


def test_a_step_over_every_row_reads_the_buffer_in_place() -> None:
    batch = Batch()
    batch.join(["a", "b"], [3, 4])
    step = batch.cache.step([batch.slots["a"], batch.slots["b"]])
    keys, _ = step.update(torch.randn(2, HEADS, 1, DIM), torch.randn(2, HEADS, 1, DIM), 0)
    assert keys.data_ptr() == batch.cache.buffer[0, 0].data_ptr()  # a view: no copy of the cache


def test_a_step_over_some_rows_in_any_order() -> None:
    batch = Batch()
    batch.join(["a", "b", "c"], [2, 5, 3])
    batch.check(["c", "a"], batch.decode(["c", "a"]))
    batch.check(["b", "c", "a"], batch.decode(["b", "c", "a"]))


def test_the_buffer_grows_past_its_positions_and_rows_keeping_what_it_held() -> None:
    batch = Batch()
    batch.join(["a"], [POSITION_CHUNK - 1])
    batch.join(["b", "c"], [1, 2])
    for _ in range(3):
        batch.check(["a", "b", "c"], batch.decode(["a", "b", "c"]))
    assert batch.cache.positions == 2 * POSITION_CHUNK
    assert batch.cache.rows >= 3
