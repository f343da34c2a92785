"""Video decoding, frame sampling and preprocessing.

Decodes with decord when installed, else PyAV; a video with a display rotation (phone videos) is
read with PyAV and turned upright, whichever backend is chosen. Frames are sampled by fps (clamped to
a frame range) or to a fixed count, both with the linspace rule; a time range (a segment) holds the
frames the clip shows in those seconds, found by their timestamps where the frame rate varies
(``frametimes.py``). Then the frames take upstream's two resizes (``frames.py``); a video given as a
list of frames takes upstream's other path there.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass

import numpy as np

from . import decoderlog, frametimes, videopass
from .containers import ends_early, is_avi
from .corpus import other_kind
from .errors import ConfigError, InputError, MissingDependencyError
from .frames import NO_FRAMES, VideoInfo, frame_list, resize_frames
from .image import Visual, patchify
from .settings import TEMPORAL_PATCH, EncoderSettings

# What is wrong with a video file, in words: the same every run. The decoder's own message (times,
# paths, source lines) goes to InputError.detail, which ingest keeps in its run log.
NO_VIDEO = "file has no video stream"
AUDIO_ONLY = "file has no video stream (audio only)"
TRUNCATED = "truncated file (an incomplete copy or download)"
UNREADABLE = "damaged or not a video (no decoder can open it)"
BAD_FRAMES = "damaged video (its frames cannot be decoded)"
NO_DECODER = "damaged or unsupported video (no decoder for its stream)"
# FFmpeg's words for a file that ends early (an MP4 is also checked by its boxes: see containers.ends_early)
_TRUNCATION_SIGNS = ("partial file", "end of file")


def _round_even(x: float) -> int:
    return max(TEMPORAL_PATCH, round(x / TEMPORAL_PATCH) * TEMPORAL_PATCH)


def frame_count(total: int, video_fps: float, settings: EncoderSettings) -> int:
    """How many frames to sample from a clip of ``total`` frames at ``video_fps``."""
    if settings.frames is not None:
        return _round_even(settings.frames)
    lo = math.ceil(settings.min_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH
    hi = max(TEMPORAL_PATCH, settings.max_frames // TEMPORAL_PATCH * TEMPORAL_PATCH)
    wanted = total / video_fps * settings.fps if video_fps > 0 else total
    return _round_even(min(max(wanted, lo), hi))


def sample_indices(total: int, n: int, sampler: str = "linspace") -> np.ndarray:
    """Frame indices to read. A clip shorter than ``n`` frames repeats its last frame."""
    if total < 1:
        raise InputError(NO_FRAMES)
    if n > total:
        return np.concatenate([np.arange(total), np.full(n - total, total - 1)]).astype(np.int64)
    if sampler == "segment-middle":  # CaReBench's rule: the middle frame of n equal segments
        starts = np.linspace(0, total, n + 1).astype(np.int64)
        return (starts[:-1] + starts[1:] - 1) // 2
    return np.linspace(0, total - 1, n).round().astype(np.int64)


@dataclass(frozen=True)
class Probe:
    """A video's frame count, rate and size, as the reader will use them (see :func:`probe`)."""

    total_frames: int
    fps: float
    width: int  # as shown: a display rotation of a quarter turn swaps the stored width and height
    height: int
    rotation: int | None = None  # display rotation, degrees counter-clockwise (0/90/180/270); None: not read
    # a variable frame rate's length in seconds, from the frames' timestamps (see frametimes.py); None where
    # the frames keep ``fps``: ranges then map to frames through the rate
    seconds: float | None = None

    @property
    def duration(self) -> float:
        if self.seconds is not None:
            return self.seconds
        return self.total_frames / self.fps if self.fps > 0 else 0.0

    def by_times(self, start, end) -> bool:
        """Whether the frames of [start, end) are found by their timestamps (a range of a variable-rate clip)."""
        return self.seconds is not None and (start is not None or end is not None)


def _backend(name: str | None) -> str:
    if name in (None, "auto"):
        try:
            _decord()
        except ImportError:
            name = "av"
        else:
            name = "decord"
    if name not in ("decord", "av"):
        raise ConfigError(f"video backend must be 'decord', 'av' or 'auto', not {name!r}")
    return name


_decord_quiet = False


def _decord():
    """decord, its bundled FFmpeg set quiet: it would print every complaint on the terminal from C."""
    global _decord_quiet
    import decord

    if not _decord_quiet:
        decord.logging.set_level(decord.logging.QUIET)
        _decord_quiet = True
    return decord


def _decord_errors() -> tuple[type[BaseException], ...]:
    """What decord raises for a file it cannot read (its own class, or RuntimeError)."""
    import decord

    return (getattr(decord, "DECORDError", RuntimeError), RuntimeError, ValueError, OSError)


def _av_errors() -> tuple[type[BaseException], ...]:
    """What PyAV raises for a file it cannot read: one FFmpegError class per FFmpeg error code (each also a
    ValueError, OSError, EOFError or MemoryError: FFmpeg's ENOMEM is often a damaged size field), or
    ValueError for frames it cannot convert. Python's own MemoryError is not one of them."""
    av = _pyav()
    return (av.FFmpegError, ValueError, OSError, EOFError)


def _failure(path: str, exc: BaseException, logs=(), *, opened: bool) -> InputError:
    """A decoder's exception as an :class:`InputError` that says in words what is wrong with the file.

    ``opened``: whether a decoder could open the container (else the file is unreadable as a video).
    The decoder's own words (and FFmpeg's messages, ``logs``) go to ``detail``.
    """
    said = str(exc)  # PyAV may quote FFmpeg's last message in the exception: not said twice
    messages = [m for m in decoderlog.formatted(logs) if m not in said]
    raw = f"{type(exc).__name__}: {said}" + ("".join(f"; {m}" for m in messages))
    text = raw.lower()
    if isinstance(exc, FileNotFoundError) and not os.path.exists(path):
        reason = "file not found (moved or deleted while it was read?)"
    elif isinstance(exc, PermissionError) and not os.access(path, os.R_OK):
        reason = "permission denied"
    elif ends_early(path) or isinstance(exc, EOFError) or any(sign in text for sign in _TRUNCATION_SIGNS):
        reason = TRUNCATED
    else:
        reason = BAD_FRAMES if opened else UNREADABLE
    return InputError(reason, source=path, detail=raw)


def _require_video(container) -> None:
    if not container.streams.video:
        raise InputError(AUDIO_ONLY if container.streams.audio else NO_VIDEO)
    if container.streams.video[0].codec_context is None:  # a codec FFmpeg does not know, or a damaged header
        raise InputError(NO_DECODER)


@contextlib.contextmanager
def _ffmpeg_messages(path: str):
    """FFmpeg's messages of this thread while the block runs (PyAV; only while ingest collects them, see
    ``decoderlog``). A block that ends normally hands them to the run log; one that raises leaves them to
    the failure it raises."""
    av = _pyav()
    with av.logging.Capture(local=True) as logs:
        yield logs
    decoderlog.note(path, decoderlog.formatted(logs))


def _frame_range(probe: Probe, start: float | None, end: float | None, shown=None) -> tuple[int, int]:
    """Frame indices [first, stop) of the time range [start, end) seconds (whole clip when None); ``shown``:
    each frame's time (seconds after the first), needed for a range of a variable-rate clip."""
    empty = InputError(f"time range {start}-{end} s holds no frame (clip is {probe.duration:.2f} s)")
    if probe.by_times(start, end) and shown is not None:
        if not _within(probe, start, end):
            raise empty
        first, stop = frametimes.time_range(shown, start, end)
        stop = min(stop, probe.total_frames)  # a damaged file can decode fewer frames than it has packets
        return min(first, stop - 1), stop
    first = 0 if start is None else max(0, round(start * probe.fps))
    stop = probe.total_frames if end is None else min(probe.total_frames, round(end * probe.fps))
    if stop <= first:
        raise empty
    return first, stop


def _within(probe: Probe, start, end) -> bool:
    """Whether [start, end) seconds opens inside a clip timed by its frames, and is not empty."""
    return (start or 0) < probe.duration and (end is None or end > (start or 0))


def sample_count(probe: Probe, settings: EncoderSettings, start, end, frames: int) -> int:
    """How many frames are sampled from [start, end) (``frames`` frames long): by the range's seconds for a
    variable-rate clip, by its frames and the rate for the others (upstream's rule, whole clips)."""
    if not probe.by_times(start, end):
        return frame_count(frames, probe.fps, settings)
    span = (probe.duration if end is None else min(end, probe.duration)) - (start or 0.0)
    return frame_count(max(span, 0.0), 1.0, settings)


def frames_sampled(probe: Probe, settings: EncoderSettings, start, end) -> int:
    """How many frames the encoder reads for [start, end), without the timestamps :func:`sampled_indices`
    needs for a range of a variable-rate clip; raises as it does for a range that holds no frame."""
    if probe.by_times(start, end):
        if not _within(probe, start, end):
            raise InputError(f"time range {start}-{end} s holds no frame (clip is {probe.duration:.2f} s)")
        return sample_count(probe, settings, start, end, 0)
    first, stop = _frame_range(probe, start, end)
    return sample_count(probe, settings, start, end, stop - first)


def sampled_indices(probe: Probe, settings: EncoderSettings, start, end, shown=None) -> np.ndarray:
    """Frame indices the encoder reads for the time range [start, end) (whole clip when None); ``shown``
    as for :func:`_frame_range`."""
    first, stop = _frame_range(probe, start, end, shown)
    count = stop - first
    return first + sample_indices(count, sample_count(probe, settings, start, end, count), settings.sampler)


def _quarter_turns(degrees: float | None) -> int:
    """``np.rot90``'s k (counter-clockwise quarter turns) for a display rotation in degrees."""
    return round((degrees or 0) / 90) % 4


def _upright(frame) -> np.ndarray:
    """A PyAV frame as (H, W, 3) uint8, turned by its display rotation the way players show it."""
    pixels = frame.to_ndarray(format="rgb24")
    turns = _quarter_turns(frame.rotation)
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _first_rotation(container) -> int:
    """Display rotation of the first video stream (degrees counter-clockwise), from its first frame."""
    for frame in container.decode(container.streams.video[0]):
        return _quarter_turns(frame.rotation) * 90
    return 0


def _checked_for_decord(path: str, times: bool = False) -> bool:
    """Open a file with PyAV before decord does; whether PyAV must read it instead.

    A file PyAV cannot open or decode the first frame of, or without a video stream, raises here:
    decord (an older FFmpeg) would fail on it too, printing its complaints on the terminal from C.
    PyAV reads three kinds that decord gets wrong (see :func:`read_frames`): a display rotation (phones store
    portrait video as landscape frames plus a rotation; decord 0.6 turns some such files itself, fails on
    others and ignores mkv's), an AVI (decord returns its frames in decode order) and a clip trimmed by an edit
    list (decord reads its frames out of order). ``times``: also read the frames' times from the packets (kept
    for the probe decord's reader gives, see :func:`_decord_probe`).
    """

    def with_av(container) -> bool:
        _require_video(container)
        stream = container.streams.video[0]
        if _first_rotation(container) or _is_avi(container) or _counts_cut_frames(container, stream):
            return True
        if times and stream.time_base is not None:  # the probe's frame times, kept (see _shown_seconds)
            container.seek(0)
            frametimes.packet_times(container, stream, _file_key(path))
        return False

    return _with_av(path, with_av)


def _with_av(path: str, use, container=None, close: bool = True):
    """``use(container)`` on the file opened with PyAV, FFmpeg's messages captured; a decoder's error
    becomes an :class:`InputError` that says in words what is wrong with the file (see :func:`_failure`).
    ``container``: the file's, open already; ``close=False``: left open for ``use`` to keep (closed when it
    fails; see ``videopass.read_segment``)."""
    av = _pyav()
    opened = container is not None
    with _ffmpeg_messages(path) as logs:
        try:
            if container is None:
                container = av.open(path)
                opened = True
            try:
                result = use(container)
            except BaseException:
                container.close()
                raise
            if close:
                container.close()
            return result
        except InputError as exc:
            raise exc.located(path) from exc
        except _av_errors() as exc:  # PyAV raises one class per FFmpeg error code
            raise _failure(path, exc, logs, opened=opened) from exc


# Each thread's last decord reader, by thread: decord reads the whole file to index it when it opens one, so
# reopening it for every segment of a long clip read it once a segment (404 MB for a 27 MB clip in 7). Kept
# only for ingest's segments (a range read with the read stage's probe), until the thread opens another file
# or the run ends (release_readers).
_READERS: dict[int, tuple[tuple, object]] = {}


def release_readers() -> None:
    """Let go of the decord readers and PyAV passes kept for the next segment (their files and decoders)."""
    _READERS.clear()
    videopass.release()


def _open_decord(path: str, keep: bool = False):
    thread, key = threading.get_ident(), _file_key(path)
    kept = _READERS.pop(thread, None)  # the last file's reader goes before another one opens
    if kept is not None and kept[0] == key:
        vr = kept[1]
    else:
        decord = _decord()
        try:
            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        except _decord_errors() as exc:  # PyAV opened the file before (see _checked_for_decord)
            raise _failure(path, exc, opened=True) from exc
        if len(vr) < 1:
            raise InputError(NO_FRAMES, source=path)
    if keep:
        _READERS[thread] = (key, vr)
    return vr


def _decord_probe(path: str, vr, timed: bool = True) -> Probe:
    """What decord says of a file (size aside: probe() decodes a frame for it); ``timed``: with the length of a
    variable frame rate (from PyAV's packets, see frametimes.py)."""
    fps = float(vr.get_avg_fps())
    shown = _shown_seconds(path) if timed else None
    return Probe(len(vr), fps, 0, 0, seconds=None if shown is None else frametimes.variable_length(shown, fps))


def _shown_seconds(path: str) -> np.ndarray | None:
    """Each frame's time in seconds after the first, from PyAV's packets (kept for the file's next segments);
    None for an AVI, which keeps no presentation times."""
    key = _file_key(path)
    kept = frametimes.kept_seconds(key)
    if kept is not None:
        return kept

    def read(container):
        _require_video(container)
        stream = container.streams.video[0]
        if stream.time_base is None or _is_avi(container):
            return None
        return frametimes.packet_times(container, stream, key)[2]

    return _with_av(path, read)


def _read_decord(path: str, settings: EncoderSettings, start=None, end=None, probe: Probe | None = None):
    ranged = start is not None or end is not None
    vr = _open_decord(path, keep=probe is not None and ranged)  # ingest reads a clip segment by segment
    if probe is None:
        probe = _decord_probe(path, vr, timed=ranged)
    elif probe.total_frames != len(vr):  # PyAV's count of a trimmed clip
        return _read_av(path, settings, start, end, probe)
    idx = sampled_indices(probe, settings, start, end, _shown_seconds(path) if probe.by_times(start, end) else None)
    try:  # a probe that over-counts reuses the last frame, as the PyAV reader does
        frames = vr.get_batch(np.minimum(idx, len(vr) - 1).tolist()).asnumpy()
    except _decord_errors() as exc:
        _READERS.pop(threading.get_ident(), None)  # not trusted with another segment
        raise _failure(path, exc, opened=True) from exc
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise InputError(f"decord returned frames of shape {frames.shape}; read it with backend='av'", source=path)
    return frames, VideoInfo(probe.total_frames, probe.fps, tuple(idx.tolist()), "decord")


def _pyav():
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError("decoding video needs PyAV or decord: pip install av") from exc
    return av


def _av_probe(container, key: tuple) -> tuple[Probe, int]:
    """The stream's facts and how many frames were decoded to get them (``key``: the file's, as for
    :func:`frametimes.packet_times`)."""
    _require_video(container)
    stream = container.streams.video[0]
    fps = _fps(stream)
    total, decoded, length = stream.frames, 0, None
    if stream.time_base is not None and not _is_avi(container):  # AVI: no presentation times, a fixed rate
        times, _, shown = frametimes.packet_times(container, stream, key)
        length = frametimes.variable_length(shown, fps)
        container.seek(0)
        if _counts_cut_frames(container, stream):  # a `-c copy` trim: its edit list cuts packets still counted
            total = len(times) or total
    if total <= 0:
        # mkv/webm store no count; their duration overestimates it after a pause or a dropped frame,
        # and the reader numbers frames as decoded, so count them the same way.
        total = decoded = sum(1 for _ in container.decode(stream))
        container.seek(0)
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    return Probe(int(total), fps, width, height, seconds=length), decoded


def _fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0)


def _is_avi(container) -> bool:
    return "avi" in container.format.name.split(",")


def _counts_cut_frames(container, stream) -> bool:
    """Whether the header's frame count exceeds the stream's duration by more than a frame or two: packets
    an edit list cuts (a `-c copy` trim) are still counted there, not shown. AVI keeps no such list."""
    fps = _fps(stream)
    if stream.frames <= 0 or not stream.duration or stream.time_base is None or fps <= 0 or _is_avi(container):
        return False
    shown = float(stream.duration * stream.time_base) * fps
    return stream.frames > shown + max(2.0, 0.01 * shown)


def _file_key(path: str) -> tuple:
    """What a file's packet timestamps and decord reader are kept by: a file changed, or another one renamed
    onto its path, is read again."""
    try:
        st = os.stat(path)
    except OSError:  # the decoder says what is wrong with it
        return (path, None)
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_av(path: str, settings: EncoderSettings, start=None, end=None, probe: Probe | None = None, then=None):
    key = _file_key(path)
    if probe is not None and (start is not None or end is not None) and is_avi(path):
        got, decoded, idx = videopass.read_segment(path, key, settings, start, end, probe, then)
    else:
        got, decoded, idx, probe = _with_av(path, lambda c: _decode_av(c, settings, start, end, probe, key))
    if not got:
        raise InputError(BAD_FRAMES, source=path, detail="no decodable frame")
    # Containers can over-report their frame count: a missing index reuses the closest earlier frame decoded.
    keys = sorted(got)

    def nearest(i: int) -> np.ndarray:
        earlier = [k for k in keys if k <= i]
        return got[earlier[-1] if earlier else keys[0]]

    frames = np.stack([got.get(i) if i in got else nearest(i) for i in idx.tolist()])
    return frames, VideoInfo(probe.total_frames, probe.fps, tuple(idx.tolist()), "av", decoded)


def _decode_av(container, settings: EncoderSettings, start, end, probe: Probe | None, key: tuple = ()):
    """The sampled frames of an open container: ({index: frame}, frames decoded, indices, probe)."""
    decoded = 0
    if probe is None:
        probe, decoded = _av_probe(container, key)
    else:
        _require_video(container)
    if probe.total_frames < 1:
        raise InputError(NO_FRAMES)
    stream = container.streams.video[0]
    # AVI stores no presentation times (PyAV's frames there carry decode times): numbered as decoded, from 0
    timed = stream.time_base is not None and not _is_avi(container)
    times, keys = None, None
    if timed and probe.by_times(start, end):
        times, keys, shown = frametimes.packet_times(container, stream, key)
        idx = sampled_indices(probe, settings, start, end, shown)
    else:
        idx = sampled_indices(probe, settings, start, end)
    wanted = set(idx.tolist())
    last = int(idx.max())
    got: dict[int, np.ndarray] = {}
    first = int(idx.min())
    if times is None and timed and first > 0:
        times, keys, _ = frametimes.packet_times(container, stream, key)
    if times is not None and first < len(times) and len(keys) and keys[0] <= times[first]:
        # Seek to the last keyframe shown at or before the range (by its own timestamp: a seek to the
        # frame's lands after it where a GOP is open) and number frames by the table of their timestamps
        # (decoding from frame 0 for every segment of a long clip would be quadratic; numbering them by
        # fps would shift them wherever the frame rate varies, as in phone videos)
        container.seek(int(keys[np.searchsorted(keys, times[first], side="right") - 1]), stream=stream, backward=True)
        numbered = ((frametimes.position(times, f.pts), f) for f in container.decode(stream))
    else:
        if times is not None:
            container.seek(0)
        numbered = enumerate(container.decode(stream))
    i = -1
    for i, frame in numbered:
        decoded += 1
        if i in wanted:
            got[i] = _upright(frame)
        if i >= last:
            break
    else:  # the file ended before the count its header gave: indices past its end take its last frame
        if i >= 0 and i not in got:
            got[i] = _upright(frame)
    return got, decoded, idx, probe


def probe(source: str | os.PathLike, backend: str | None = None) -> Probe:
    """Frame count, fps and size of a video file; raises :class:`InputError` when it cannot be read.

    The count is the one :func:`read_frames` samples from, so passing this probe to it reads the same
    frames. With PyAV, a container that stores no count (mkv, webm) is decoded once to count (linear in
    its length); mp4 and decord read it from the header or index.
    """
    path = os.fspath(source)
    # PyAV opens every file first, whichever the backend: one decord cannot open never reaches it
    if _backend(backend) == "decord" and not _checked_for_decord(path, times=True):
        vr = _open_decord(path)
        found = _decord_probe(path, vr)
        try:
            height, width = vr[0].shape[:2]
        except _decord_errors() as exc:  # decord's own error class for an undecodable first frame
            raise _failure(path, exc, opened=True) from exc
        return Probe(found.total_frames, found.fps, int(width), int(height), rotation=0, seconds=found.seconds)
    key = _file_key(path)
    found, rotation = _with_av(path, lambda container: (_av_probe(container, key)[0], _first_rotation(container)))
    if found.total_frames < 1 or found.fps <= 0:
        raise InputError(NO_FRAMES, source=path)
    width, height = (found.height, found.width) if rotation in (90, 270) else (found.width, found.height)
    return Probe(found.total_frames, found.fps, width, height, rotation, seconds=found.seconds)


def read_frames(
    source,
    settings: EncoderSettings,
    backend: str | None = None,
    start=None,
    end=None,
    probe: Probe | None = None,
    then: tuple[float, float] | None = None,
):
    """Sampled frames of a video file: ((n, H, W, 3) uint8 upright, VideoInfo).

    ``start``/``end`` (seconds) restrict a file to a time range, sampled by the same rule.
    ``probe``, this file's :func:`probe`, saves recounting its frames on every call: without it, PyAV
    decodes a whole mkv/webm to count them, so reading a long clip segment by segment is quadratic.
    ``then``: the range this thread reads from the file next (ingest's next segment), so that an AVI's decoder
    is kept to go on from this range (see videopass.py); others seek.
    A video with a display rotation, an AVI and a trimmed clip are read with PyAV whatever ``backend`` says (see
    :func:`_checked_for_decord`). Frames given as a list are not read here: see :func:`frame_list`.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"read_frames takes a video file, not {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise InputError("video file not found", source=path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise InputError("video file is empty or not a regular file", source=path)
    reader = _read_av
    try:
        if _backend(backend) == "decord":
            # a file not probed yet is opened by PyAV first: one decord cannot open never reaches it
            known = probe is not None and probe.rotation is not None
            # with a probe, a trimmed clip is told by its count (see _read_decord), the others here
            with_av = (bool(probe.rotation) or is_avi(path)) if known else _checked_for_decord(path)
            reader = _read_av if with_av else _read_decord
        if reader is _read_av:
            return _read_av(path, settings, start, end, probe, then)
        return reader(path, settings, start, end, probe)
    except InputError as exc:
        # a photo (or a text) given as a video is not a damaged video: say what it is
        if (other := other_kind(path, "video")) is not None:
            raise InputError(other, source=path, detail=exc.detail or exc.reason) from exc
        if exc.source is None:
            raise exc.located(path) from exc
        raise


@dataclass(frozen=True)
class SampledFrames:
    """Frames :func:`read_frames` sampled from a video file, to be preprocessed as that file's.

    Unlike a plain list of frames (which upstream treats as images, see :func:`frame_list`), these
    take the video file path's stage 1: the per-frame cap and antialiased bicubic.
    """

    frames: np.ndarray  # (n, H, W, 3) uint8, n even
    source: str | None = None


def preprocess_video(
    source,
    settings: EncoderSettings,
    backend: str | None = None,
    start=None,
    end=None,
    probe: Probe | None = None,
    then: tuple[float, float] | None = None,
) -> Visual:
    """Everything from a user's video (a file, :class:`SampledFrames` or a list of frames) to
    vision-tower input (``start`` to ``then``: as for :func:`read_frames`)."""
    if isinstance(source, SampledFrames):
        return patchify(resize_frames(source.frames, settings))
    if isinstance(source, (str, os.PathLike)):
        frames, _ = read_frames(source, settings, backend, start, end, probe, then)
        return patchify(resize_frames(frames, settings))
    return patchify(frame_list(source, settings)[0])
