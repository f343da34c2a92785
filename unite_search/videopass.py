"""One pass through an AVI read segment by segment.

An AVI stores no presentation times, so its frames are numbered as they are decoded from the first,
and a seek cannot say which frame it landed on. Reading each segment of a long AVI from frame 0 made
ingest quadratic in its length (a 4-minute clip in 30 s segments decoded 5.9 times its frames; an hour
would decode 72 times). So a thread keeps its decoder between the segment reads of one file and goes
on from where the last read stopped; the frames of the next segment that the last read passed (the
segments overlap) are kept with it. The frames are the same: one decoder's output, in its order.

Kept only for ingest's segment reads, which say which segment comes next (``then``), until the thread
reads another file, the file changes, or the run ends (``video.release_readers``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from .errors import InputError

# Each thread's pass, by thread (see video._READERS for decord's readers)
_PASSES: dict[int, Pass] = {}


class Pass:
    """An open container decoding its frames in order, numbered from 0."""

    def __init__(self, key: tuple, container, upright: Callable[[object], np.ndarray]):
        self.key = key
        self.container = container
        self._frames: Iterator = iter(container.decode(container.streams.video[0]))
        self._upright = upright
        self.at = 0  # index of the next frame the decoder gives
        self.kept: dict[int, np.ndarray] = {}  # frames passed that the next read wants
        self.end: tuple[int, np.ndarray] | None = None  # the file's last frame once it ended
        self._last = None  # the last frame decoded, unconverted

    def covers(self, wanted: Iterable[int]) -> bool:
        """Whether every index wanted is still ahead, or kept."""
        return all(i >= self.at or i in self.kept for i in wanted)

    def read(self, wanted: set[int], last: int, then: set[int]) -> tuple[dict[int, np.ndarray], int]:
        """The frames at ``wanted`` up to ``last`` (with the file's last frame when it ends first) and how
        many were decoded; keeps those of ``then`` it passes."""
        got = {i: self.kept[i] for i in wanted if i < self.at}
        self.kept = {i: frame for i, frame in self.kept.items() if i in then}
        decoded = 0
        while self.end is None and self.at <= last:
            frame = next(self._frames, None)
            if frame is None:  # ended before the count its header gave: indices past its end take its last frame
                if self.at > 0:
                    self.end = (self.at - 1, self._last)
                break
            i, decoded = self.at, decoded + 1
            self.at += 1
            self._last = frame
            if i in wanted or i in then:
                pixels = self._upright(frame)
                if i in wanted:
                    got[i] = pixels
                if i in then:
                    self.kept[i] = pixels
        if self.end is not None:
            i, frame = self.end
            if not isinstance(frame, np.ndarray):
                frame = self._upright(frame)
                self.end = (i, frame)
            got.setdefault(i, frame)
        return got, decoded

    def close(self) -> None:
        self.container.close()


def read_segment(path: str, key: tuple, settings, start, end, probe, then):
    """A segment of an AVI, read by this thread's pass through the file where it can go on from the last
    segment, else by a new one; kept for the next segment, ``then`` (its start and end), unless None. The
    frames by index, the count decoded and the indices sampled, as ``video._decode_av`` gives them."""
    from . import video  # it reads its AVI segments here

    idx = video.sampled_indices(probe, settings, start, end)
    wanted = set(idx.tolist())
    try:
        upcoming = set(video.sampled_indices(probe, settings, *then).tolist()) if then is not None else set()
    except InputError:  # a next range that holds no frame is not read
        upcoming = set()
    kept = _PASSES.pop(threading.get_ident(), None)
    if kept is not None and (kept.key != key or not kept.covers(wanted)):  # another file, or a range behind it
        kept.close()
        kept = None

    def read(container):
        nonlocal kept
        if kept is None:
            video._require_video(container)
            kept = Pass(key, container, video._upright)
        return kept.read(wanted, int(idx.max()), upcoming)

    got, decoded = video._with_av(path, read, None if kept is None else kept.container, close=False)
    if then is not None:
        _PASSES[threading.get_ident()] = kept
    else:
        kept.close()
    return got, decoded, idx


def release() -> None:
    """Close every kept pass (their files and decoders)."""
    while _PASSES:
        _, p = _PASSES.popitem()
        p.close()
