"""When each frame of a video file is shown, and which frames a time range in seconds holds.

Most clips show a frame every ``1/fps`` seconds, and a range maps to frame indices through the rate.
A clip with a variable frame rate does not: phones lower theirs in the dark and drop frames under load,
screen recorders send a frame only when the screen changes. There the container's rate is an average (or,
in mkv and webm, a nominal rate the frames never kept), and ``seconds x rate`` can land many seconds away
from what the clip shows then: 13.9-51.7 s for a row that says 25-55 s. Such a clip is told by its
timestamps, and its ranges and its length come from them (:func:`variable_length`, :func:`time_range`).
A clip whose frames all lie within half a frame of ``i/fps`` keeps the rate's arithmetic, so its
frames are the ones earlier versions read.

The timestamps come from the packets, read with PyAV (nothing is decoded), whichever backend decodes the
frames: decord's own times are float32 (a millisecond off past a day's offset) and absent in short mkv clips.
Each is taken relative to the first frame shown.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

# a timestamp this close to a range's edge counts as on it (decord keeps times as float32)
EDGE = 1e-3
TIMES_KEPT = 16  # files whose packet timestamps are kept for their next segments

_TIMES: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()  # by file: pts, keys, seconds
_TIMES_LOCK = threading.Lock()


def kept_seconds(key: tuple) -> np.ndarray | None:
    """The times :func:`packet_times` read for ``key``, in seconds after the first frame (None: not kept)."""
    with _TIMES_LOCK:
        return _TIMES[key][2] if key in _TIMES else None


def packet_times(container, stream, key: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(every shown frame's timestamp in presentation order, the keyframes' timestamps, both in the stream's
    time base; the frames' times in seconds after the first), from the packets of an open PyAV container
    (nothing is decoded): frame i is the one at ``times[i]``, whatever the frame rate did. Packets an edit
    list cuts are not frames. Kept by ``key`` (the file's path and stat) for its next segments; the container
    is left at its end."""
    with _TIMES_LOCK:
        if key in _TIMES:
            _TIMES.move_to_end(key)
            return _TIMES[key]
    shown, keys = [], []
    for packet in container.demux(stream):
        if packet.pts is not None and not packet.is_discard:
            shown.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    times = np.sort(np.asarray(shown, np.int64))
    found = (times, np.sort(np.asarray(keys, np.int64)), seconds(times, stream.time_base))
    with _TIMES_LOCK:
        _TIMES[key] = found
        while len(_TIMES) > TIMES_KEPT:
            _TIMES.popitem(last=False)
    return found


def seconds(times: np.ndarray, time_base) -> np.ndarray:
    """Timestamps in a time base as seconds after the first frame shown."""
    if len(times) == 0:
        return np.zeros(0)
    return (times - times[0]).astype(np.float64) * float(time_base)


def position(times: np.ndarray, pts) -> int:
    """The frame index of a timestamp (-1 for one the packets did not show)."""
    if pts is None:
        return -1
    at = int(np.searchsorted(times, pts))
    return at if at < len(times) and times[at] == pts else -1


def variable_length(shown: np.ndarray, fps: float) -> float | None:
    """The clip's length in seconds when its frames (``shown``: seconds after the first) do not keep
    ``fps``, some frame lying more than half a frame from ``i/fps``; None when they keep it. The length runs
    to the end of the last frame, which is shown as long as the one before it."""
    if len(shown) < 2 or fps <= 0:
        return None
    if np.abs(shown - np.arange(len(shown)) / fps).max() <= 0.5 / fps:
        return None
    length = round(float(shown[-1] + (shown[-1] - shown[-2])), 6)  # to the microsecond: 12.0, not 12.000000000000002
    return length if math.isfinite(length) and length > 0 else None


def time_range(shown: np.ndarray, start: float | None, end: float | None) -> tuple[int, int]:
    """Frame indices [first, stop) of what a clip shows in [start, end) seconds (``shown``: each frame's
    time after the first): from the frame on screen at ``start`` to the last one that appears before
    ``end``. A range inside one long-held frame holds that frame."""
    first = 0 if start is None else max(0, int(np.searchsorted(shown, start + EDGE, side="right")) - 1)
    stop = len(shown) if end is None else int(np.searchsorted(shown, end - EDGE, side="left"))
    return first, min(len(shown), max(stop, first + 1))
