"""A big tensor from one worker's segment forwarded, as that segment, to another worker through the
main process (a pipeline's hop), without processes: nothing copied in the main process, the maker's
segment busy until the last worker viewing it lets go, its unlinking passed on, a gone one unreadable."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from inferd.channel import decode, encode
from inferd.messages import Batch, BatchDone
from inferd.segments import (
    SHM_DIR,
    RegionUnreadable,
    SegmentDirectory,
    SegmentReader,
    SegmentWriter,
    segment_prefix,
    sweep_worker,
)


class Counted:
    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}

    def __call__(self, path: str, nbytes: int) -> None:
        self.bytes[path] = self.bytes.get(path, 0) + nbytes


@dataclass
class Hop:
    """Worker `maker` -> main -> worker `taker`: each end's writer and reader, as the channels hold them."""

    maker: SegmentWriter  # in the maker's worker
    main_from_maker: SegmentReader
    main_to_taker: SegmentWriter
    taker: SegmentReader  # in the taker's worker
    maker_prefix: str
    main_prefix: str
    sent: Counted
    directory: SegmentDirectory
    maker_pid: int


@pytest.fixture
def hop() -> Iterator[Hop]:
    pids = [10_000_000 + uuid.uuid4().int % 1_000_000 + n for n in (0, 1)]  # no process has these
    maker_prefix, main_prefix = segment_prefix(os.getpid(), pids[0], "w"), segment_prefix(os.getpid(), pids[1], "m")
    directory, sent = SegmentDirectory(), Counted()
    hop = Hop(
        SegmentWriter(maker_prefix),
        SegmentReader(directory=directory),
        SegmentWriter(main_prefix, count=sent, directory=directory),
        SegmentReader(),
        maker_prefix,
        main_prefix,
        sent,
        directory,
        pids[0],
    )
    yield hop
    hop.maker.close()
    hop.main_to_taker.close()
    for name in own_segments(maker_prefix) + own_segments(main_prefix):
        (SHM_DIR / name).unlink()


def own_segments(prefix: str) -> list[str]:
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))


def cross(message: object, writer: SegmentWriter, reader: SegmentReader) -> object:
    frames = encode(message, writer)
    return decode(bytearray(frames[0]), [bytearray(frame) for frame in frames[1:]], reader)


def image() -> np.ndarray:
    return np.arange(3 * 224 * 224, dtype=np.float32).reshape(3, 224, 224)


def test_a_view_of_a_workers_segment_goes_on_as_that_segment(hop: Hop) -> None:
    done = cross(BatchDone(1, [[image()]], 0.0), hop.maker, hop.main_from_maker)
    made = own_segments(hop.maker_prefix)
    batch = Batch(2, [{"image": done.results[0][0][np.newaxis]}])  # type: ignore[attr-defined]
    frames = encode(batch, hop.main_to_taker)
    assert len(frames) == 1 and len(frames[0]) < 1024  # only the descriptor
    assert own_segments(hop.main_prefix) == []  # the main process made no segment of its own
    assert hop.sent.bytes == {"forwarded": image().nbytes}
    got = decode(bytearray(frames[0]), [], hop.taker).payloads[0]["image"]
    assert got.shape == (1, 3, 224, 224) and np.array_equal(got[0], image())
    assert own_segments(hop.maker_prefix) == made


def test_the_makers_segment_stays_busy_until_the_last_worker_viewing_it_lets_go(hop: Hop) -> None:
    done = cross(BatchDone(1, [[image()]], 0.0), hop.maker, hop.main_from_maker)
    taken = cross(Batch(2, [[done.results[0][0]]]), hop.main_to_taker, hop.taker)  # type: ignore[attr-defined]
    del done  # the main process's own views are gone, the one it keeps for the taker is not
    assert hop.main_from_maker.take_freed() == ()
    del taken
    freed_by_taker = hop.taker.take_freed()
    assert freed_by_taker == tuple(own_segments(hop.maker_prefix))
    hop.main_to_taker.release(freed_by_taker)  # the taker's notice
    freed = hop.main_from_maker.take_freed()
    assert freed == freed_by_taker  # now the maker may reuse it
    hop.maker.release(freed)
    cross(BatchDone(3, [[image()]], 0.0), hop.maker, hop.main_from_maker)
    assert own_segments(hop.maker_prefix) == list(freed)  # the pool's segment again


def test_a_segment_its_maker_unlinks_is_dropped_by_the_worker_it_went_to(hop: Hop) -> None:
    done = cross(BatchDone(1, [[image(), image(), image()]], 0.0), hop.maker, hop.main_from_maker)
    taken = cross(Batch(2, [done.results[0]]), hop.main_to_taker, hop.taker)  # type: ignore[attr-defined]
    del done, taken
    hop.main_to_taker.release(hop.taker.take_freed())
    hop.maker.release(hop.main_from_maker.take_freed())  # three free: its pool keeps two
    gone = hop.maker.take_gone()
    assert len(gone) == 1 and own_segments(hop.maker_prefix) and gone[0] not in own_segments(hop.maker_prefix)
    hop.main_from_maker.forget(gone)  # the maker's notice
    assert hop.main_to_taker.take_gone() == gone  # passed on to the taker in the main's next notice


def test_a_makers_sweep_leaves_what_is_held_until_its_last_view_goes(hop: Hop) -> None:
    done = cross(BatchDone(1, [[image()]], 0.0), hop.maker, hop.main_from_maker)
    frames = encode(Batch(2, [[done.results[0][0]]]), hop.main_to_taker)  # type: ignore[attr-defined]
    made = own_segments(hop.maker_prefix)
    kept = hop.directory.hold_orphans(hop.maker_prefix)  # the maker exited: what the supervisor does
    assert sweep_worker(os.getpid(), hop.maker_pid, kept) == 0 and own_segments(hop.maker_prefix) == made
    hop.main_from_maker.close()  # its channel closed too
    item = decode(bytearray(frames[0]), [], hop.taker).payloads[0][0]  # mapped after all that
    assert np.array_equal(item, image())
    del done, frames, item
    hop.main_to_taker.release(hop.taker.take_freed())  # the last view gone: unlinked, its gone passed on
    assert own_segments(hop.maker_prefix) == []
    assert set(hop.main_to_taker.take_gone()) == set(made)


def test_a_forwarded_segment_gone_before_the_taker_maps_it_is_unreadable(hop: Hop) -> None:
    done = cross(BatchDone(1, [[image()]], 0.0), hop.maker, hop.main_from_maker)
    frames = encode(Batch(2, [[done.results[0][0]]]), hop.main_to_taker)  # type: ignore[attr-defined]
    for name in own_segments(hop.maker_prefix):  # the maker died and its segments were swept
        (SHM_DIR / name).unlink()
    item = decode(bytearray(frames[0]), [], hop.taker).payloads[0][0]
    assert isinstance(item, RegionUnreadable) and "could not be read" in item.message
    hop.main_to_taker.release(hop.taker.take_freed())  # nothing is kept for the taker any more
    del done, frames
    assert hop.main_from_maker.take_freed()


def test_copies_and_strided_views_are_copied_as_before(hop: Hop) -> None:
    done = cross(BatchDone(1, [[image()]], 0.0), hop.maker, hop.main_from_maker)
    view = done.results[0][0]  # type: ignore[attr-defined]
    got = cross(Batch(2, [[view.copy(), view.transpose(1, 2, 0)]]), hop.main_to_taker, hop.taker)
    assert set(hop.sent.bytes) == {"segment"}
    assert np.array_equal(got.payloads[0][1], image().transpose(1, 2, 0))  # type: ignore[attr-defined]
