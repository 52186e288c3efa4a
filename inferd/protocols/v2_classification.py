"""Triton's classification extension: an output asked for with `parameters: {"classification": K}`
answers, for each row of the batch, its K largest values as BYTES `"score:index[:label]"`, largest
first; labels come from the output's `label_filename` (one class name a line, line N for index N).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from inferd.errors import BadRequest, ModelUnavailable


def classify(name: str, array: np.ndarray, count: int, labels: tuple[str, ...]) -> np.ndarray:
    """The top `count` classes of each row of `array` (batch dim first), shape [rows, count]."""
    if array.ndim == 0 or array.dtype.kind not in "biuf":
        raise BadRequest(f"output {name!r}: classification needs a numeric output with a batch dimension")
    rows = array.reshape(len(array), -1)
    count = min(count, rows.shape[1])
    top = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    entries = [[_entry(row[index], int(index), labels) for index in indices] for row, indices in zip(rows, top)]
    return np.array(entries, dtype=np.object_).reshape(len(rows), count)


def _entry(score: np.generic, index: int, labels: tuple[str, ...]) -> bytes:
    # Triton writes the score with C++'s std::to_string: six decimals for a float.
    value = f"{float(score):f}" if np.issubdtype(score.dtype, np.floating) else str(int(score))
    text = f"{value}:{index}:{labels[index]}" if index < len(labels) else f"{value}:{index}"
    return text.encode()


@functools.lru_cache(maxsize=64)
def read_labels(path: Path) -> tuple[str, ...]:
    """The class names in `path`, read once; `inferd validate` checks that the file exists."""
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as error:
        raise ModelUnavailable(f"label_filename {path} cannot be read: {error}") from None
