"""Big tensors between the main process and a worker through POSIX shared memory: the channel's
socket carries only their descriptors.

While a message is pickled, each numpy array in it is looked at (pickle's reducer hook) and sent
as one of two descriptors, which the receiving end turns back into an array when it unpickles:
- a *segment*: an array of at least `THRESHOLD_BYTES` is copied into a shared-memory object of the
  sender's pool, named `inferd-seg-<main pid>-<worker pid>-<m|w><n>` (`m`: made by the main
  process, `w`: by the worker). The receiver maps it (once: it keeps the mapping for the next use)
  and answers a view of it.
- a *client region*: an input that a client put in a region it registered (`region_view`). The
  worker maps the client's object itself and reads the slice: the bytes never enter the main
  process's heap. The client owns the object; nobody here unlinks it.
- a *forwarded segment*: in the main process, an array that is a contiguous view of a segment one
  worker made (a pipeline step's output on its way to the next step) goes to another worker as the
  segment's name and offset: the receiver maps the maker's segment (once, as its peer's) and reads
  it in place, so a hop between workers copies nothing in the main process. The main process's
  `SegmentDirectory` knows which arrays are such views.
- *shared bytes*: a large raw item (a request body's bytes, a v2 BYTES element: an image, a file)
  that the main process wrapped as `SharedBytes` is copied into a segment too; the worker copies
  it out as plain bytes, so the segment is free again as soon as the batch is read.

Ownership: a segment belongs to the end that made it, and only that end unlinks it. It is busy
from the send until the receiver's last view of it is gone; the receiver then names it in a
`SegmentNotice` ahead of its next message, and the sender takes it back into its pool. A sender
keeps a few free segments of each size (fresh tmpfs pages cost ten times the copy: allocating and
freeing them, not moving bytes, is what a segment per message would pay) and unlinks the rest,
naming them in its own notice so the receiver drops its mapping. When a worker exits, the main
process unlinks every segment named for it (`sweep_worker`), its own for that worker and the
worker's; at start and stop it unlinks its own and those of any main process no longer running
(`sweep_daemon`), so nothing is left in /dev/shm after a stop, a worker's SIGKILL or its own.
Where /dev/shm cannot be written, arrays go on the socket as before.

A forwarded segment stays the maker's: the main process keeps its own view of it (so it stays busy
for the maker) until the worker it was forwarded to names it as freed; when the maker unlinks it,
the main process passes the name on as gone to each worker it forwarded it to, which drops its
mapping. When the maker exits, its sweep leaves the segments a view in the main process still
holds (a worker they went to may not have mapped them yet); the main process unlinks each with its
last view. One the receiver still cannot map fails that request alone, as an unreadable client
region does.
"""

from __future__ import annotations

import copyreg
import io
import itertools
import logging
import math
import mmap
import os
import pickle
import re
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# From this size an array or a raw item crosses in a segment instead of on the socket.
# bench/channel_threshold.py, round trip of one FP32 array each way, 2 cores: on a quiet machine
# segments took 0.69x the socket's time at 128 KiB in two runs of two (0.26 against 0.38 ms), 0.68x
# and 1.13x at 64 KiB, 1.06-1.25x at 32 KiB; under load 15, 4 MiB 7 ms against 27 ms. A PNG of 235
# KiB into the classify pipeline's decode step, c=1: 0.98-1.16 ms of hop against 1.20-1.25 on the socket.
THRESHOLD_BYTES = 128 * 1024
_NAME = re.compile(r"^inferd-seg-(\d+)-(\d+)-[mw]\d+$")
_KINDS = frozenset("biufc")  # bool, integers, floats, complex: fixed-size elements, no objects
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map every page in one call, not one fault per page
_KEPT_PER_SIZE = 2  # free segments a pool keeps per size: a batch in the worker, the next one sent
_POOLED_MAX_BYTES = 64 * 1024 * 1024  # bigger ones are unlinked once free
_PROTOCOL = 5  # out-of-band buffers
CountBytes = Callable[[str, int], None]  # (path: "segment" | "forwarded" | "client_region" | "socket", bytes)


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


class SharedBytes(bytes):
    """A large raw item (a request's body: an image, a file) that the main process sends to a
    worker through a segment instead of the socket: on the socket, bytes this size cross in
    several writes, each waking the reader (a 1 MB raw body at c=1: 5.2 ms that way, 4.1 through
    a segment). The worker gets plain bytes, copied out of the segment, which goes back to the
    pool at once."""


def shared_bytes(data: bytes | memoryview) -> bytes:
    """A raw item's bytes, as SharedBytes when they are large enough to cross in a segment."""
    if len(data) >= THRESHOLD_BYTES:
        return SharedBytes(data)
    return data if isinstance(data, bytes) else bytes(data)


@dataclass(frozen=True)
class RegionUnreadable:
    """Stands for an input whose client region the worker could not map (the client removed or
    shrank it after the request was checked); the runner fails that request alone."""

    key: str
    reason: str

    @property
    def message(self) -> str:
        return f"the shared-memory object {self.key!r} holding an input could not be read ({self.reason})"


@dataclass(frozen=True)
class SegmentNotice:
    """Channel-internal, sent ahead of a message: segments of the peer's this end no longer views
    (`freed`: the peer may reuse them), and segments of this end's it unlinked (`gone`: the peer
    drops its mapping)."""

    freed: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()


@dataclass
class _Segment:
    name: str
    capacity: int
    mapping: mmap.mmap


class SegmentDirectory:
    """The main process's index of the segments its channels' readers hold views of (by the view's
    root), and of the writers each was forwarded through: one for the whole daemon, shared by every
    worker's channel. Thread-safe: roots die wherever their last user drops them."""

    def __init__(self) -> None:
        self._roots: dict[int, tuple[str, weakref.ref[np.ndarray]]] = {}
        self._forwarders: dict[str, set[SegmentWriter]] = {}
        self._orphans: set[str] = set()  # held still, their maker gone: unlinked with their last view
        self._lock = threading.Lock()

    def add(self, root: np.ndarray, name: str) -> None:
        self._roots[id(root)] = (name, weakref.ref(root))

    def locate(self, array: np.ndarray) -> tuple[str, int] | None:
        """The segment and byte offset of `array`'s bytes, if it is a contiguous view of one."""
        root = array.base
        if not isinstance(root, np.ndarray) or not array.flags.c_contiguous:
            return None
        entry = self._roots.get(id(root))
        if entry is None or entry[1]() is not root:
            return None
        offset = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        return entry[0], offset

    def forwarded(self, name: str, writer: SegmentWriter) -> None:
        with self._lock:
            self._forwarders.setdefault(name, set()).add(writer)

    def gone(self, names: Iterable[str]) -> None:
        """Their maker unlinked them (or is gone): every worker they went to drops its mapping."""
        with self._lock:
            writers = [(name, self._forwarders.pop(name, ())) for name in names]
        for name, forwarders in writers:
            for writer in forwarders:
                writer.relay_gone(name)

    def hold_orphans(self, prefix: str) -> frozenset[str]:
        """The segments named `prefix...` that a view here still holds, their maker gone: kept
        from its sweep (a worker they were forwarded to may not have mapped them yet) and unlinked
        once their last view here is gone."""
        with self._lock:
            held = {name for name, root in list(self._roots.values()) if name.startswith(prefix) and root() is not None}
            self._orphans |= held
        return frozenset(held)

    def root_gone(self, root_id: int, name: str) -> bool:
        """Whether that was the last view of an orphan, which the caller then unlinks."""
        self._roots.pop(root_id, None)
        with self._lock:
            if name not in self._orphans:
                return False
            self._orphans.discard(name)
        return True

    def drop(self, writer: SegmentWriter) -> None:
        with self._lock:
            for forwarders in self._forwarders.values():
                forwarders.discard(writer)


class SegmentWriter:
    """One channel end's sender: turns arrays into descriptors while a message is pickled, copying
    big ones into segments of its pool."""

    def __init__(
        self,
        prefix: str,
        threshold_bytes: int = THRESHOLD_BYTES,
        count: CountBytes = _uncounted,
        directory: SegmentDirectory | None = None,
    ) -> None:
        self._prefix = prefix
        self._directory = directory
        self._threshold_bytes = threshold_bytes
        self._numbers = itertools.count()
        self._count = count
        self._enabled = SHM_DIR.is_dir()
        self._free: dict[int, list[_Segment]] = {}  # by capacity
        self._busy: dict[str, _Segment] = {}
        self._gone: list[str] = []
        self._forwarded: dict[str, list[np.ndarray]] = {}  # views kept for the peer, per foreign segment
        self._lock = threading.Lock()  # a worker takes notices in on its reader thread, sends on others
        self._copyreg: dict[Any, Any] | None = None
        self._table: dict[type, Callable[[Any], Any]] = {}

    def dispatch_table(self) -> dict[type, Callable[[Any], Any]]:
        """copyreg's reducers and this writer's for arrays (rebuilt only when copyreg's change)."""
        if self._copyreg != copyreg.dispatch_table:
            self._copyreg = dict(copyreg.dispatch_table)
            self._table = {**self._copyreg, **dict.fromkeys(_ARRAY_TYPES, self.reduce), SharedBytes: self.reduce_bytes}
        return self._table

    def dumps(self, message: object, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
        file = io.BytesIO()
        _Pickler(file, self, buffer_callback).dump(message)
        return file.getvalue()

    def reduce(self, obj: np.ndarray) -> Any:
        """An array's pickled form: a descriptor of the segment or region holding its bytes, or its
        bytes (inline when small, since numpy's own reduce costs several times the copy)."""
        if obj.dtype.kind not in _KINDS:
            return obj.__reduce_ex__(_PROTOCOL)
        if isinstance(obj, RegionArray) and obj.region_key is not None:
            self._count("client_region", obj.nbytes)
            return attach_region, (obj.region_key, obj.region_offset, obj.dtype.str, obj.shape)
        if obj.nbytes < self._threshold_bytes:
            return _by_value(obj)
        located = self._directory.locate(obj) if self._directory is not None else None
        if located is not None:
            return self._forward(obj, *located)
        segment = self._busy_segment(obj.nbytes)
        if segment is None:
            return _by_value(obj)
        np.copyto(np.frombuffer(segment.mapping, obj.dtype, obj.size).reshape(obj.shape), obj)
        self._count("segment", obj.nbytes)
        return attach_segment, (segment.name, obj.dtype.str, obj.shape)

    def reduce_bytes(self, obj: SharedBytes) -> Any:
        """A SharedBytes's pickled form: its segment's name (the bytes copied there), or the bytes
        themselves when shared memory is off or it is small."""
        segment = self._busy_segment(len(obj)) if len(obj) >= self._threshold_bytes else None
        if segment is None:
            return bytes, (bytes(obj),)
        segment.mapping[: len(obj)] = obj
        self._count("segment", len(obj))
        return attach_bytes, (segment.name, len(obj))

    def _busy_segment(self, nbytes: int) -> _Segment | None:
        """A segment of the pool for `nbytes`, marked busy; None where shared memory is off."""
        if not self._enabled:
            return None
        with self._lock:
            segment = self._take(nbytes)
            if segment is not None:
                self._busy[segment.name] = segment
        return segment

    def _forward(self, array: np.ndarray, name: str, offset: int) -> Any:
        assert self._directory is not None
        with self._lock:
            self._forwarded.setdefault(name, []).append(array)  # busy for its maker while the peer views it
        self._directory.forwarded(name, self)
        self._count("forwarded", array.nbytes)
        return attach_forwarded, (name, offset, array.dtype.str, array.shape)

    def relay_gone(self, name: str) -> None:
        """A segment forwarded through this end was unlinked by its maker: the peer drops its mapping."""
        with self._lock:
            self._gone.append(name)

    def release(self, names: tuple[str, ...]) -> None:
        """The peer no longer views these: back to the pool, or unlinked past what it keeps; a
        forwarded one, the view kept for it dropped."""
        with self._lock:
            for name in names:
                kept_views = self._forwarded.get(name)
                if kept_views:
                    kept_views.pop()
                    if not kept_views:
                        del self._forwarded[name]
                    continue
                segment = self._busy.pop(name, None)
                if segment is None:
                    continue
                kept = self._free.setdefault(segment.capacity, [])
                if segment.capacity <= _POOLED_MAX_BYTES and len(kept) < _KEPT_PER_SIZE:
                    kept.append(segment)
                else:
                    self._unlink(segment)

    def take_gone(self) -> tuple[str, ...]:
        with self._lock:
            gone, self._gone = tuple(self._gone), []
        return gone

    def close(self) -> None:
        """Unlink every segment of this end's (the peer is gone, or going)."""
        with self._lock:
            for segment in [*self._busy.values(), *(s for kept in self._free.values() for s in kept)]:
                self._unlink(segment)
            self._busy, self._free, self._gone, self._forwarded = {}, {}, [], {}
        if self._directory is not None:  # forwarded segments are their makers' to unlink
            self._directory.drop(self)

    def _take(self, nbytes: int) -> _Segment | None:
        capacity = 1 << max(nbytes - 1, 1).bit_length()  # powers of two: a pool serves nearby sizes
        kept = self._free.get(capacity)
        if kept:
            return kept.pop()
        name = f"{self._prefix}{next(self._numbers)}"
        try:
            return _Segment(name, capacity, _create(SHM_DIR / name, capacity))
        except OSError as error:  # /dev/shm full, or not writable: arrays go on the socket
            log.warning("shared memory for big tensors is off on this channel (%s); they go on the socket", error)
            self._enabled = False
            return None

    def _unlink(self, segment: _Segment) -> None:
        segment.mapping.close()
        (SHM_DIR / segment.name).unlink(missing_ok=True)
        self._gone.append(segment.name)


def _create(path: Path, capacity: int) -> mmap.mmap:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(descriptor, capacity)
        return mmap.mmap(descriptor, capacity, flags=mmap.MAP_SHARED | _POPULATE)
    except OSError:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(descriptor)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, writer: SegmentWriter, buffer_callback: Any) -> None:
        super().__init__(file, protocol=_PROTOCOL, buffer_callback=buffer_callback)
        # By type, looked up in C: a reducer_override would be a Python call for every object.
        self.dispatch_table = writer.dispatch_table()


# The array types the writer pickles itself (a dispatch table matches exact types only); other
# ndarray subclasses are pickled by numpy, their bytes on the socket.
_ARRAY_TYPES = (np.ndarray, RegionArray, np.memmap)
INLINE_MAX_BYTES = 16 * 1024  # up to this size an array is pickled as its bytes (a copy: cheap)


def _by_value(array: np.ndarray) -> Any:
    """A small C-ordered array as its bytes, rebuilt by `inline_array`: a third of numpy's own
    reduce and half its rebuild (bench: an array of 16 floats, 8 against 19 us a message)."""
    if array.nbytes <= INLINE_MAX_BYTES and array.flags.c_contiguous:
        # A bytearray so that it is rebuilt writable; of `.data`, since bytearray(n) of a 0-d
        # integer array would make n zero bytes.
        return inline_array, (bytearray(array.data), array.dtype.str, array.shape)
    return array.__reduce_ex__(_PROTOCOL)


def inline_array(data: bytearray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(data, dtype).reshape(shape)


class SegmentReader:
    """One channel end's receiver: maps the segments and regions a message names, and notes each
    segment whose last view here is gone (thread-safe: views die wherever their last user drops them)."""

    def __init__(self, count: CountBytes = _uncounted, directory: SegmentDirectory | None = None) -> None:
        self._count = count
        self._directory = directory
        self._mappings: dict[str, mmap.mmap] = {}
        self._freed: deque[str] = deque()

    def loads(self, data: memoryview, buffers: list[Any]) -> Any:
        return _Unpickler(io.BytesIO(data), buffers, self).load()

    def attach_segment(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        root = np.frombuffer(self._mapping(name), dtype, count=math.prod(shape))
        self._count("segment", root.nbytes)
        if self._directory is None:
            weakref.finalize(root, self._freed.append, name)  # every view of it holds `root`
        else:  # in the main process: a view of it may be forwarded to another worker
            self._directory.add(root, name)
            weakref.finalize(root, self._root_gone, id(root), name)
        return root.reshape(shape)

    def attach_bytes(self, name: str, nbytes: int) -> bytes:
        """SharedBytes' bytes, copied out: nothing here views the segment, so it is freed at once."""
        data = self._mapping(name)[:nbytes]
        self._count("segment", nbytes)
        self._freed.append(name)  # only once copied out: the maker may reuse it at its next send
        return data

    def _mapping(self, name: str) -> mmap.mmap:
        """The peer's segment `name`, mapped on first use and kept for the next."""
        mapping = self._mappings.get(name)
        if mapping is None:
            mapping = self._mappings[name] = _map(SHM_DIR / name)
        return mapping

    def _root_gone(self, root_id: int, name: str) -> None:
        assert self._directory is not None
        if not self._directory.root_gone(root_id, name):
            self._freed.append(name)
            return
        (SHM_DIR / name).unlink(missing_ok=True)  # its maker is gone: nobody else would
        self._directory.gone((name,))

    def attach_forwarded(
        self, name: str, offset: int, dtype: str, shape: tuple[int, ...]
    ) -> np.ndarray | RegionUnreadable:
        """A segment another worker made, forwarded by the main process: mapped once, read in place."""
        mapping = self._mappings.get(name)
        if mapping is None:
            if not _NAME.match(name):
                return RegionUnreadable(name, "not a segment's name")
            try:
                mapping = self._mappings[name] = _map(SHM_DIR / name)
            except OSError as error:  # its maker died and was swept before this mapped it
                self._freed.append(name)  # the main process need not keep it busy for this end
                return RegionUnreadable(name, error.strerror or str(error))
        root = np.frombuffer(mapping, dtype, count=math.prod(shape), offset=offset)
        weakref.finalize(root, self._freed.append, name)
        self._count("forwarded", root.nbytes)
        return root.reshape(shape)

    def attach_region(self, key: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray | RegionUnreadable:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        try:
            mapping, start = _map_window(key, offset, nbytes)
        except OSError as error:
            return RegionUnreadable(key, error.strerror or str(error))
        except ValueError as error:
            return RegionUnreadable(key, str(error))
        return np.frombuffer(mapping, dtype, count=math.prod(shape), offset=start).reshape(shape)

    def take_freed(self) -> tuple[str, ...]:
        freed = []
        while self._freed:
            freed.append(self._freed.popleft())
        return tuple(freed)

    def forget(self, names: tuple[str, ...]) -> None:
        for name in names:
            _close(self._mappings.pop(name, None))
        if self._directory is not None:
            self._directory.gone(names)

    def close(self) -> None:
        for mapping in self._mappings.values():
            _close(mapping)
        if self._directory is not None:  # the maker is gone: so are its segments, for every worker
            self._directory.gone(tuple(self._mappings))
        self._mappings = {}


def _map(path: Path) -> mmap.mmap:
    descriptor = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        return mmap.mmap(descriptor, 0, flags=mmap.MAP_SHARED | _POPULATE)
    finally:
        os.close(descriptor)


def _close(mapping: mmap.mmap | None) -> None:
    try:
        if mapping is not None:
            mapping.close()
    except BufferError:  # a view of it is still in use: the mapping goes with the last one
        pass


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
        if module == __name__ and name in ("attach_segment", "attach_region", "attach_forwarded", "attach_bytes"):
            return getattr(self._reader, name)  # this end's reader, which counts what it maps
        return super().find_class(module, name)


# Pickled by reference in descriptors; the receiving end's reader stands in for them.
def attach_segment(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return SegmentReader().attach_segment(name, dtype, shape)


def attach_region(key: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray | RegionUnreadable:
    return SegmentReader().attach_region(key, offset, dtype, shape)


def attach_forwarded(name: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray | RegionUnreadable:
    return SegmentReader().attach_forwarded(name, offset, dtype, shape)


def attach_bytes(name: str, nbytes: int) -> bytes:
    return SegmentReader().attach_bytes(name, nbytes)


def notice_for_peer(reader: SegmentReader, writer: SegmentWriter | None) -> SegmentNotice | None:
    """What this end has to tell the peer ahead of its next message, if anything."""
    notice = SegmentNotice(reader.take_freed(), writer.take_gone() if writer is not None else ())
    return notice if notice.freed or notice.gone else None


def apply_notice(notice: SegmentNotice, reader: SegmentReader, writer: SegmentWriter | None) -> None:
    if writer is not None:
        writer.release(notice.freed)
    reader.forget(notice.gone)


def unreadable_input(payload: Any) -> RegionUnreadable | None:
    """The first input (or item) of a request's payload that could not be mapped, if any."""
    values = payload.values() if isinstance(payload, dict) else payload if isinstance(payload, list) else ()
    return next((value for value in values if isinstance(value, RegionUnreadable)), None)


# ---- sweeping -----------------------------------------------------------------------------------


def sweep_worker(main_pid: int, worker_pid: int, kept: frozenset[str] = frozenset()) -> int:
    """Unlink every segment left for or by a worker that exited, but those `kept`; how many there were."""
    return _sweep(lambda owner, worker: owner == main_pid and worker == worker_pid, kept)


def sweep_daemon(main_pid: int) -> int:
    """Unlink this main process's segments, and those of main processes no longer running."""
    return _sweep(lambda owner, worker: owner == main_pid or not _running(owner))


def _sweep(chosen: Callable[[int, int], bool], kept: frozenset[str] = frozenset()) -> int:
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    swept = 0
    for name in names:
        match = _NAME.match(name)
        if match and chosen(int(match[1]), int(match[2])) and name not in kept:
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
