"""System shared-memory regions a client registers (Triton's shared-memory extension), for
inputs read from and outputs written to memory both processes map, instead of the request body.

The client creates the POSIX shared-memory object (`shm_open`, e.g. with
`tritonclient.utils.shared_memory`) and owns it: inferd maps it on register, unmaps it on
unregister or when it stops, and never unlinks it. Every reference a request makes (region, offset,
byte size) is checked against the registered window before a byte is touched, so a bad reference is
a 400, never a fault. An input of fixed-size elements stays in the region: the request holds a view
of it that crosses to the worker as a descriptor (inferd.segments), and the worker maps the
client's object itself; BYTES inputs are copied out and parsed here. A region unregistered while a
view of it is in flight stays mapped until that request is done.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import re
import stat
from dataclasses import dataclass

import numpy as np

from inferd.datatypes import Datatype, TensorDataError, array_from_binary, shape_text
from inferd.errors import BadRequest
from inferd.segments import region_view

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
MAX_REGIONS = 1024  # each holds a mapping and a descriptor's worth of kernel state
_KEY = re.compile(r"^/?[A-Za-z0-9_.@:+-][A-Za-z0-9_.@:+=-]{0,254}$")
_NAME = re.compile(r"^[^\x00-\x1f/]{1,128}$")


class RegionExists(BadRequest):
    """A region of that name is registered already (gRPC: ALREADY_EXISTS)."""


@dataclass(frozen=True, slots=True)
class RegionRef:
    """Where one tensor lives: `byte_size` bytes at `offset` into region `name`."""

    name: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class Region:
    name: str
    key: str
    offset: int  # into the shared-memory object, where the registered window starts
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict[str, object]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SharedMemory:
    """The registered regions of one inferd, by name."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if name in self._regions:
            raise RegionExists(f"a shared-memory region named {name!r} is registered already; unregister it first")
        _check_names(name, key)
        if len(self._regions) >= MAX_REGIONS:
            raise BadRequest(f"{MAX_REGIONS} shared-memory regions are registered (the most); unregister some")
        if offset < 0 or byte_size <= 0:
            raise BadRequest(f"region {name!r}: offset must be >= 0 and byte_size > 0, got {offset} and {byte_size}")
        self._regions[name] = Region(name, key, offset, byte_size, _map(name, key, offset, byte_size))
        log.info("shared-memory region %r registered: key %s, %d bytes at offset %d", name, key, byte_size, offset)

    def unregister(self, name: str | None = None) -> None:
        """Unregister `name` (nothing if it is not registered, as Triton does), or every region."""
        for region_name in [name] if name is not None else list(self._regions):
            region = self._regions.pop(region_name, None)
            if region is not None:
                _unmap(region)
                log.info("shared-memory region %r unregistered", region_name)

    def status(self, name: str | None = None) -> list[dict[str, object]]:
        if name is None:
            return [region.status() for region in self._regions.values()]
        return [self._find(name).status()]

    def read(self, ref: RegionRef, what: str) -> bytes:
        """A copy of the bytes `ref` names."""
        start = self._window(ref, what)
        try:
            return self._regions[ref.name].mapping[start : start + ref.byte_size]
        except (ValueError, KeyError):  # unregistered by another request meanwhile (decoding runs off the loop)
            raise BadRequest(f"{what}: shared-memory region {ref.name!r} was unregistered while in use") from None

    def tensor(self, ref: RegionRef, datatype: Datatype, shape: tuple[int, ...], what: str) -> np.ndarray:
        """The input `ref` names: a view of the region where its elements have a fixed size (checked
        to fill `ref` exactly), else parsed from a copy."""
        if datatype.itemsize_bytes is None:
            return array_from_binary(memoryview(self.read(ref, what)), datatype, shape)
        needed = math.prod(shape) * datatype.itemsize_bytes
        if ref.byte_size != needed:
            raise TensorDataError(
                f"shared_memory_byte_size is {ref.byte_size} but shape {shape_text(shape)} of "
                f"{datatype.name} needs {needed} bytes"
            )
        start = self._window(ref, what)
        try:
            region = self._regions[ref.name]
            return region_view(region.mapping, region.key, start, datatype.numpy_dtype, shape)
        except (ValueError, KeyError):  # unregistered by another request meanwhile (decoding runs off the loop)
            raise BadRequest(f"{what}: shared-memory region {ref.name!r} was unregistered while in use") from None

    def write(self, ref: RegionRef, data: bytes | memoryview, what: str) -> None:
        size = memoryview(data).nbytes
        if size > ref.byte_size:
            raise BadRequest(
                f"{what} has {size} bytes but its shared-memory window holds {ref.byte_size}; give a larger "
                "shared_memory_byte_size (and region)"
            )
        start = self._window(ref, what)
        try:
            self._regions[ref.name].mapping[start : start + size] = data
        except (ValueError, KeyError):
            raise BadRequest(f"{what}: shared-memory region {ref.name!r} was unregistered while in use") from None

    def close(self) -> None:
        self.unregister()

    def _find(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            known = sorted(self._regions)[:20]
            raise BadRequest(f"no shared-memory region named {name!r} is registered; registered: {known}")
        return region

    def _window(self, ref: RegionRef, what: str) -> int:
        """The mapping's offset of `ref`'s first byte, once `ref` is checked to lie in its region."""
        region = self._find(ref.name)
        if ref.offset < 0 or ref.byte_size < 0 or ref.offset + ref.byte_size > region.byte_size:
            raise BadRequest(
                f"{what}: {ref.byte_size} bytes at offset {ref.offset} do not fit shared-memory region "
                f"{ref.name!r} of {region.byte_size} bytes"
            )
        return region.offset + ref.offset


def _unmap(region: Region) -> None:
    try:
        region.mapping.close()
    except BufferError:  # a request in flight still views it: the mapping goes with its last view
        log.debug("shared-memory region %r is still in use; unmapped once its requests are done", region.name)


def _check_names(name: str, key: str) -> None:
    if not _NAME.match(name):
        raise BadRequest(f"region name {name[:40]!r} must be 1 to 128 printable characters without '/'")
    if not _KEY.match(key) or key.strip("/") in ("", ".", ".."):
        raise BadRequest(f"region {name!r}: key {key[:40]!r} must be a POSIX shared-memory name such as '/input0'")


def _map(name: str, key: str, offset: int, byte_size: int) -> mmap.mmap:
    path = os.path.join(SHM_DIR, key.lstrip("/"))
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise BadRequest(
            f"region {name!r}: cannot open shared-memory key {key!r} ({error.strerror}); create it first "
            "(shm_open, or tritonclient.utils.shared_memory.create_shared_memory_region)"
        ) from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or offset + byte_size > info.st_size:
            raise BadRequest(
                f"region {name!r}: {byte_size} bytes at offset {offset} do not fit shared-memory key {key!r} "
                f"of {info.st_size} bytes"
            )
        return mmap.mmap(descriptor, info.st_size)
    finally:
        os.close(descriptor)
