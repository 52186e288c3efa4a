"""The messages main and workers exchange. Plain data only: numbers, strings, lists, dicts and
numpy arrays; an error crosses as (type name, message), never as a pickled exception.

A request's payload is a dict of named numpy arrays (tensor models) or a list of raw items
(handler models), or `Items` when a handler request carries parameters; its outputs come back as a
dict of arrays or a list of encoded outputs, one per item.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Parameters:
    """What a request asked besides its inputs, for a handler's `predict`: the request's own
    parameters (v2 request-level or native `parameters`) and each requested output's."""

    request: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Items:
    """A handler request's items with its parameters (a bare list of items when it gave none)."""

    values: list[Any]
    parameters: Parameters

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class PackedItems:
    """A handler request's items (a list or `Items`) as one pickle, unpickled only in its worker:
    items decoded from a large JSON body would cost the main process as much to unpickle and
    pickle again as to parse (see `inferd.decoder`)."""

    blob: bytes | bytearray
    count: int

    @classmethod
    def pack(cls, items: list[Any] | Items) -> PackedItems:
        return cls(pickle.dumps(items, protocol=5), len(items))

    def unpack(self) -> list[Any] | Items:
        return pickle.loads(self.blob)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self.count

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # The blob as a PickleBuffer: the channel sends it as a frame of its own, never copied
        # into a pickle, and the receiver keeps that frame as the blob.
        return PackedItems, (pickle.PickleBuffer(self.blob), self.count)


Payload = dict[str, np.ndarray] | list[Any] | Items | PackedItems


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # v2 datatype name, e.g. "FP32"
    shape: tuple[int, ...]  # -1 where the size varies; the first is the batch dimension


@dataclass(frozen=True)
class Ready:
    """Sent once, after the model loaded and warmed up on its device."""

    pid: int
    cpus: tuple[int, ...]
    threads: int
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    load_s: float = 0.0
    streams: bool = False  # a handler whose predict yields: requests may ask for its chunks as they come


@dataclass(frozen=True)
class BootFailed:
    """Sent instead of Ready when the model cannot be loaded or warmed up; the worker then exits."""

    error_type: str
    message: str


@dataclass(frozen=True)
class Batch:
    batch_id: int
    payloads: list[Payload]


@dataclass(frozen=True)
class RequestFailure:
    """One request of a batch failed; `bad_input` when the model rejected that request's data.
    `message` is fit for the caller (no traceback, no paths); `detail` is the traceback as one line, for the log."""

    error_type: str
    message: str
    bad_input: bool = True
    detail: str = ""


@dataclass(frozen=True)
class BatchDone:
    batch_id: int
    results: list[Payload | RequestFailure]
    compute_s: float
    gpu: GpuMemory | None = None
    resident_bytes: int | None = None  # the worker's RSS after the batch, where a limit applies
    cpu_s: float | None = None  # the batch's CPU time, where one thread on a CPU does all its work


@dataclass(frozen=True)
class GpuMemory:
    """What torch's allocator in one worker holds, read inside that worker."""

    device: str
    allocated_bytes: int
    reserved_bytes: int


@dataclass(frozen=True)
class Stats:
    """Sent periodically by GPU workers so GPU memory is current without a request."""

    gpu: GpuMemory


@dataclass(frozen=True)
class Stop:
    """Asks a worker to finish and exit 0."""

    reason: str = field(default="shutdown")


@dataclass(frozen=True)
class HeadsUp:
    """A batch is due within about `within_s` (main -> worker; a pipeline's step before it is
    running): the worker polls for it instead of sleeping. Workers that do not poll ignore it."""

    within_s: float


@dataclass(frozen=True)
class Sampling:
    """How a sequence picks its next token: temperature 0 is greedy (and deterministic)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Generate:
    """Start one sequence (main -> worker). `prompt` is a text, or chat messages for the handler's
    chat template. The worker answers with Chunks for `sequence_id` until one ends it."""

    sequence_id: int
    prompt: str | list[dict[str, str]]
    max_tokens: int
    max_prompt_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class StreamPredict:
    """Start one streamed request on a handler whose predict yields (main -> worker): its items
    join the next predict call; the worker answers Chunks for `sequence_id` until one ends it."""

    sequence_id: int
    payload: Payload


@dataclass(frozen=True)
class Cancel:
    """Drop a running sequence (main -> worker): its client left or its deadline passed."""

    sequence_id: int


@dataclass(frozen=True)
class Chunk:
    """What one step made for one sequence: new text and tokens, or, for a handler whose predict
    yields, one encoded output per item of the request (`outputs`). `finish_reason` ("stop",
    "length") or `failure` ends the sequence; `prompt_tokens` is set on the first chunk."""

    sequence_id: int
    text: str = ""
    tokens: int = 0
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    failure: RequestFailure | None = None
    outputs: list[Any] | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.failure is not None


@dataclass(frozen=True)
class Chunks:
    """One decode step's chunks (worker -> main), one message for the whole running batch."""

    chunks: list[Chunk]
