"""Big tensors between the main process and a worker through POSIX shared memory: the channel's
socket carries only their descriptors.

While a message is pickled, each numpy array in it is looked at (pickle's reducer hook) and sent
as one of two descriptors, which the receiving end turns back into an array when it unpickles:
- a *segment*: an array of at least `THRESHOLD_BYTES` is written into a shared-memory object made
  for it, named `inferd-seg-<main pid>-<worker pid>-<m|w><n>` (`m`: made by the main process, `w`:
  by the worker). The receiver maps it and unlinks the name at once, so its mapping is then the only
  reference and the memory goes with the last array viewing it.
- a *client region*: an input that a client put in a region it registered (`region_view`). The
  worker maps the client's object itself and reads the slice: the bytes never enter the main
  process's heap. The client owns the object; nobody here unlinks it.

Ownership: a segment has one owner at a time, its sender until the receiver maps it, then the
receiver. A segment whose receiver never took it (its worker died, or the main process did) still
has its name, and the main process frees it: every segment of a worker that exited
(`sweep_worker`), and at start and stop every segment of its own or of a main process no longer
running (`sweep_daemon`), so nothing is left in /dev/shm.
Where /dev/shm cannot be written, arrays go on the socket as before.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import mmap
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# Past this size an array crosses in a segment instead of on the socket (bench/channel.py: below
# it the segment's extra system calls cost more than the socket's copies save).
THRESHOLD_BYTES = 256 * 1024
_NAME = re.compile(r"^inferd-seg-(\d+)-(\d+)-[mw]\d+$")
_KINDS = frozenset("biufc")  # bool, integers, floats, complex: fixed-size elements, no objects
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map every page in one call, not one fault per page
CountBytes = Callable[[str, int], None]  # (path: "segment" | "client_region" | "socket", bytes)


def _uncounted(path: str, nbytes: int) -> None:
    pass


def segment_prefix(main_pid: int, worker_pid: int, maker: str) -> str:
    return f"inferd-seg-{main_pid}-{worker_pid}-{maker}"


class RegionArray(np.ndarray):
    """A read-only view of a client's registered region whose bytes the worker reads from the
    region itself. Only the view `region_view` made carries the region (slices and reshapes of it
    are plain views, pickled as their bytes)."""

    region_key: str | None
    region_offset: int

    def __array_finalize__(self, obj: Any) -> None:
        self.region_key = None
        self.region_offset = 0


def region_view(mapping: mmap.mmap, key: str, offset: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """`shape` elements of `dtype` at `offset` into the mapping of the client's object `key`."""
    flat = np.frombuffer(mapping, dtype, count=math.prod(shape), offset=offset)
    array = flat.reshape(shape).view(RegionArray)
    array.flags.writeable = False
    array.region_key, array.region_offset = key, offset
    return array


@dataclass(frozen=True)
class RegionUnreadable:
    """Stands for an input whose client region the worker could not map (the client removed or
    shrank it after the request was checked); the runner fails that request alone."""

    key: str
    reason: str

    @property
    def message(self) -> str:
        return f"the shared-memory object {self.key!r} holding an input could not be read ({self.reason})"


class SegmentWriter:
    """One channel end's sender: turns arrays into descriptors while a message is pickled."""

    def __init__(self, prefix: str, threshold_bytes: int = THRESHOLD_BYTES, count: CountBytes = _uncounted) -> None:
        self._prefix = prefix
        self._threshold_bytes = threshold_bytes
        self._numbers = itertools.count()
        self._count = count
        self._enabled = SHM_DIR.is_dir()

    def dumps(self, message: object, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
        file = io.BytesIO()
        _Pickler(file, self, buffer_callback).dump(message)
        return file.getvalue()

    def reduce(self, obj: Any) -> Any:
        if not isinstance(obj, np.ndarray) or obj.dtype.kind not in _KINDS:
            return NotImplemented
        if isinstance(obj, RegionArray) and obj.region_key is not None:
            self._count("client_region", obj.nbytes)
            return attach_region, (obj.region_key, obj.region_offset, obj.dtype.str, obj.shape)
        if obj.nbytes < self._threshold_bytes or not self._enabled:
            return NotImplemented
        name = self._write(obj)
        if name is None:
            return NotImplemented
        self._count("segment", obj.nbytes)
        return attach_segment, (name, obj.dtype.str, obj.shape)

    def _write(self, array: np.ndarray) -> str | None:
        name = f"{self._prefix}{next(self._numbers)}"
        path = SHM_DIR / name
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as error:
            self._give_up(f"cannot create {path}: {error.strerror}")
            return None
        try:
            _write_all(descriptor, np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        except OSError as error:  # /dev/shm full: this array goes on the socket
            path.unlink(missing_ok=True)
            self._give_up(f"cannot write {array.nbytes} bytes to {path}: {error.strerror}")
            return None
        finally:
            os.close(descriptor)
        return name

    def _give_up(self, reason: str) -> None:
        log.warning("shared memory for big tensors is off on this channel: %s; they go on the socket", reason)
        self._enabled = False


def _write_all(descriptor: int, data: memoryview) -> None:
    # A write into tmpfs: no page of the sender's is mapped, so there are no faults to take.
    done = 0
    while done < data.nbytes:
        done += os.pwrite(descriptor, data[done:], done)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, writer: SegmentWriter, buffer_callback: Any) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._writer = writer

    def reducer_override(self, obj: Any) -> Any:
        return self._writer.reduce(obj)


class SegmentReader:
    """One channel end's receiver: maps the segments and regions a message names."""

    def __init__(self, count: CountBytes = _uncounted) -> None:
        self._count = count

    def loads(self, data: memoryview, buffers: list[Any]) -> Any:
        return _Unpickler(io.BytesIO(data), buffers, self).load()

    def attach_segment(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        path = SHM_DIR / name
        descriptor = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            mapping = mmap.mmap(descriptor, nbytes, flags=mmap.MAP_SHARED | _POPULATE)
        finally:
            os.close(descriptor)
            path.unlink(missing_ok=True)  # from here the mapping is the only reference
        self._count("segment", nbytes)
        return np.frombuffer(mapping, dtype, count=math.prod(shape)).reshape(shape)

    def attach_region(self, key: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray | RegionUnreadable:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        try:
            mapping, start = _map_window(key, offset, nbytes)
        except OSError as error:
            return RegionUnreadable(key, error.strerror or str(error))
        except ValueError as error:
            return RegionUnreadable(key, str(error))
        return np.frombuffer(mapping, dtype, count=math.prod(shape), offset=start).reshape(shape)


def _map_window(key: str, offset: int, nbytes: int) -> tuple[mmap.mmap, int]:
    """A read-only mapping of the pages holding `nbytes` at `offset`, and where they start in it."""
    descriptor = os.open(SHM_DIR / key.lstrip("/"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(descriptor).st_size < offset + nbytes:  # mapping past the end would fault
            raise ValueError(f"it holds fewer than {offset + nbytes} bytes")
        aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
        length = offset - aligned + nbytes
        return mmap.mmap(
            descriptor, length, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ, offset=aligned
        ), offset - aligned
    finally:
        os.close(descriptor)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: list[Any], reader: SegmentReader) -> None:
        super().__init__(file, buffers=buffers)
        self._reader = reader

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name in ("attach_segment", "attach_region"):
            return getattr(self._reader, name)  # this end's reader, which counts what it maps
        return super().find_class(module, name)


# Pickled by reference in descriptors; the receiving end's reader stands in for them.
def attach_segment(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return SegmentReader().attach_segment(name, dtype, shape)


def attach_region(key: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray | RegionUnreadable:
    return SegmentReader().attach_region(key, offset, dtype, shape)


def unreadable_input(payload: Any) -> RegionUnreadable | None:
    """The first input of a request's payload that could not be mapped, if any."""
    if isinstance(payload, dict):
        return next((value for value in payload.values() if isinstance(value, RegionUnreadable)), None)
    return None


# ---- sweeping -----------------------------------------------------------------------------------


def sweep_worker(main_pid: int, worker_pid: int) -> int:
    """Unlink every segment left for or by a worker that exited; how many there were."""
    return _sweep(lambda owner, worker: owner == main_pid and worker == worker_pid)


def sweep_daemon(main_pid: int) -> int:
    """Unlink this main process's segments, and those of main processes no longer running."""
    return _sweep(lambda owner, worker: owner == main_pid or not _running(owner))


def _sweep(chosen: Callable[[int, int], bool]) -> int:
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    swept = 0
    for name in names:
        match = _NAME.match(name)
        if match and chosen(int(match[1]), int(match[2])):
            try:
                os.unlink(SHM_DIR / name)
                swept += 1
            except FileNotFoundError:  # its receiver took it meanwhile
                pass
    return swept


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
