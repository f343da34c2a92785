"""Video decoding, frame sampling and preprocessing.

Decodes with decord when installed, else PyAV; a video with a display rotation (phone videos) is
read with PyAV and turned upright, whichever backend is chosen. Frames are sampled by fps (clamped to
a frame range) or to a fixed count, both with the linspace rule; then each frame goes through a
per-frame pixel cap (the qwen-vl-utils step, antialiased bicubic) and the processor's resize with
UNITE's budget (which raises small frames). A video given as a list of frames takes upstream's
other path: each frame through the image fetch step, the count padded to even, never cut.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import decoderlog
from .containers import ends_early, is_avi
from .errors import ConfigError, InputError, MissingDependencyError
from .image import BICUBIC, Visual, load_image, patchify, smart_resize
from .settings import TEMPORAL_PATCH, EncoderSettings

# qwen-vl-utils bounds that enter the per-frame cap alongside the user's.
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28

# What is wrong with a video file, in words: the same every run. The decoder's own message (times,
# paths, source lines) goes to InputError.detail, which ingest keeps in its run log.
NO_VIDEO = "file has no video stream"
AUDIO_ONLY = "file has no video stream (audio only)"
TRUNCATED = "truncated file (an incomplete copy or download)"
UNREADABLE = "damaged or not a video (no decoder can open it)"
BAD_FRAMES = "damaged video (its frames cannot be decoded)"
NO_DECODER = "damaged or unsupported video (no decoder for its stream)"
NO_FRAMES = "video has no frames"
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
class VideoInfo:
    total_frames: int
    fps: float
    indices: tuple[int, ...]
    backend: str
    decoded: int | None = None  # frames PyAV decoded for this call, counting pass included (None: not measured)


@dataclass(frozen=True)
class Probe:
    """A video's frame count, rate and size, as the reader will use them (see :func:`probe`)."""

    total_frames: int
    fps: float
    width: int  # as shown: a display rotation of a quarter turn swaps the stored width and height
    height: int
    rotation: int | None = None  # display rotation, degrees counter-clockwise (0/90/180/270); None: not read

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps if self.fps > 0 else 0.0


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


def _frame_range(probe: Probe, start: float | None, end: float | None) -> tuple[int, int]:
    """Frame indices [first, stop) of the time range [start, end) seconds (whole clip when None)."""
    first = 0 if start is None else max(0, round(start * probe.fps))
    stop = probe.total_frames if end is None else min(probe.total_frames, round(end * probe.fps))
    if stop <= first:
        raise InputError(f"time range {start}-{end} s holds no frame (clip is {probe.duration:.2f} s)")
    return first, stop


def sampled_indices(probe: Probe, settings: EncoderSettings, start, end) -> np.ndarray:
    """Frame indices the encoder reads for the time range [start, end) (whole clip when None)."""
    first, stop = _frame_range(probe, start, end)
    count = stop - first
    return first + sample_indices(count, frame_count(count, probe.fps, settings), settings.sampler)


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


def _checked_for_decord(path: str) -> bool:
    """Open a file with PyAV before decord does; whether PyAV must read it instead.

    A file PyAV cannot open or decode the first frame of, or without a video stream, raises here:
    decord (an older FFmpeg) would fail on it too, printing its complaints on the terminal from C.
    PyAV reads three kinds that decord gets wrong (see :func:`read_frames`): a display rotation (phones store
    portrait video as landscape frames plus a rotation; decord 0.6 turns some such files itself, fails on
    others and ignores mkv's), an AVI (decord returns its frames in decode order) and a clip trimmed by an edit
    list (decord reads its frames out of order).
    """

    def with_av(container) -> bool:
        _require_video(container)
        stream = container.streams.video[0]
        return bool(_first_rotation(container)) or _is_avi(container) or _counts_cut_frames(container, stream)

    return _with_av(path, with_av)


def _with_av(path: str, use):
    """``use(container)`` on the file opened with PyAV, FFmpeg's messages captured; a decoder's error
    becomes an :class:`InputError` that says in words what is wrong with the file (see :func:`_failure`)."""
    av = _pyav()
    opened = False
    with _ffmpeg_messages(path) as logs:
        try:
            with av.open(path) as container:
                opened = True
                return use(container)
        except InputError as exc:
            raise exc.located(path) from exc
        except _av_errors() as exc:  # PyAV raises one class per FFmpeg error code
            raise _failure(path, exc, logs, opened=opened) from exc


def _open_decord(path: str):
    decord = _decord()
    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except _decord_errors() as exc:  # PyAV opened the file before (see _checked_for_decord)
        raise _failure(path, exc, opened=True) from exc
    if len(vr) < 1:
        raise InputError(NO_FRAMES, source=path)
    return vr, Probe(len(vr), float(vr.get_avg_fps()), 0, 0)  # size: probe() decodes a frame for it


def _read_decord(path: str, settings: EncoderSettings, start=None, end=None, probe: Probe | None = None):
    vr, found = _open_decord(path)
    if probe is not None and probe.total_frames != found.total_frames:  # PyAV's count of a trimmed clip
        return _read_av(path, settings, start, end, probe)
    probe = found if probe is None else probe
    idx = sampled_indices(probe, settings, start, end)
    try:  # a probe that over-counts reuses the last frame, as the PyAV reader does
        frames = vr.get_batch(np.minimum(idx, len(vr) - 1).tolist()).asnumpy()
    except _decord_errors() as exc:
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


def _av_probe(container) -> tuple[Probe, int]:
    """The stream's facts and how many frames were decoded to get them."""
    _require_video(container)
    stream = container.streams.video[0]
    fps = _fps(stream)
    total, decoded = stream.frames, 0
    if _counts_cut_frames(container, stream):  # a `-c copy` trim: its edit list cuts packets still counted
        total = sum(1 for p in container.demux(stream) if p.pts is not None and not p.is_discard) or total
        container.seek(0)
    if total <= 0:
        # mkv/webm store no count; their duration overestimates it after a pause or a dropped frame,
        # and the reader numbers frames as decoded, so count them the same way.
        total = decoded = sum(1 for _ in container.decode(stream))
        container.seek(0)
    return Probe(int(total), fps, int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)), decoded


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


def _read_av(path: str, settings: EncoderSettings, start=None, end=None, probe: Probe | None = None):
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
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


_TIMES: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # the files read last (_frame_times)
_TIMES_LOCK = threading.Lock()
TIMES_KEPT = 16


def _frame_times(container, stream, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(every shown frame's timestamp in presentation order, the keyframes' timestamps), from the packets
    (nothing is decoded): frame i is the one at ``times[i]``, whatever the frame rate did. Packets an
    edit list cuts are not frames. Kept for the file's next segments."""
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
    found = (np.sort(np.asarray(shown, np.int64)), np.sort(np.asarray(keys, np.int64)))
    with _TIMES_LOCK:
        _TIMES[key] = found
        while len(_TIMES) > TIMES_KEPT:
            _TIMES.popitem(last=False)
    return found


def _decode_av(container, settings: EncoderSettings, start, end, probe: Probe | None, key: tuple = ()):
    """The sampled frames of an open container: ({index: frame}, frames decoded, indices, probe)."""
    decoded = 0
    if probe is None:
        probe, decoded = _av_probe(container)
    else:
        _require_video(container)
    if probe.total_frames < 1:
        raise InputError(NO_FRAMES)
    idx = sampled_indices(probe, settings, start, end)
    stream = container.streams.video[0]
    wanted = set(idx.tolist())
    last = int(idx.max())
    got: dict[int, np.ndarray] = {}
    first = int(idx.min())
    # AVI stores no presentation times (PyAV's frames there carry decode times): numbered as decoded, from 0
    seekable = first > 0 and stream.time_base is not None and not _is_avi(container)
    times, keys = _frame_times(container, stream, key) if seekable else (None, None)
    if times is not None and first < len(times) and len(keys) and keys[0] <= times[first]:
        # Seek to the last keyframe shown at or before the range (by its own timestamp: a seek to the
        # frame's lands after it where a GOP is open) and number frames by the table of their timestamps
        # (decoding from frame 0 for every segment of a long clip would be quadratic; numbering them by
        # fps would shift them wherever the frame rate varies, as in phone videos)
        container.seek(int(keys[np.searchsorted(keys, times[first], side="right") - 1]), stream=stream, backward=True)
        numbered = ((_position(times, f.pts), f) for f in container.decode(stream))
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


def _position(times: np.ndarray, pts) -> int:
    """The frame index of a timestamp (-1 for one the packets did not show)."""
    if pts is None:
        return -1
    at = int(np.searchsorted(times, pts))
    return at if at < len(times) and times[at] == pts else -1


def probe(source: str | os.PathLike, backend: str | None = None) -> Probe:
    """Frame count, fps and size of a video file; raises :class:`InputError` when it cannot be read.

    The count is the one :func:`read_frames` samples from, so passing this probe to it reads the same
    frames. With PyAV, a container that stores no count (mkv, webm) is decoded once to count (linear in
    its length); mp4 and decord read it from the header or index.
    """
    path = os.fspath(source)
    # PyAV opens every file first, whichever the backend: one decord cannot open never reaches it
    if _backend(backend) == "decord" and not _checked_for_decord(path):
        vr, found = _open_decord(path)
        try:
            height, width = vr[0].shape[:2]
        except _decord_errors() as exc:  # decord's own error class for an undecodable first frame
            raise _failure(path, exc, opened=True) from exc
        return Probe(found.total_frames, found.fps, int(width), int(height), rotation=0)
    found, rotation = _with_av(path, lambda container: (_av_probe(container)[0], _first_rotation(container)))
    if found.total_frames < 1 or found.fps <= 0:
        raise InputError(NO_FRAMES, source=path)
    width, height = (found.height, found.width) if rotation in (90, 270) else (found.width, found.height)
    return Probe(found.total_frames, found.fps, width, height, rotation)


def read_frames(
    source,
    settings: EncoderSettings,
    backend: str | None = None,
    start=None,
    end=None,
    probe: Probe | None = None,
):
    """Sampled frames of a video file: ((n, H, W, 3) uint8 upright, VideoInfo).

    ``start``/``end`` (seconds) restrict a file to a time range, sampled by the same rule.
    ``probe``, this file's :func:`probe`, saves recounting its frames on every call: without it, PyAV
    decodes a whole mkv/webm to count them, so reading a long clip segment by segment is quadratic.
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
    if _backend(backend) == "decord":
        # a file not probed yet is opened by PyAV first: one decord cannot open never reaches it
        known = probe is not None and probe.rotation is not None
        # with a probe, a trimmed clip is told by its count (see _read_decord), the others here
        with_av = (bool(probe.rotation) or is_avi(path)) if known else _checked_for_decord(path)
        reader = _read_av if with_av else _read_decord
    try:
        return reader(path, settings, start, end, probe)
    except InputError as exc:
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


def frame_list(source, settings: EncoderSettings) -> tuple[np.ndarray, VideoInfo]:
    """A video given as a list of frames (paths, PIL images or arrays), preprocessed as upstream does.

    Every frame is taken, none dropped, and an odd count is padded to even by repeating the last
    frame. Each frame goes through the image fetch step (PIL bicubic to multiples of 28, at least
    4*28*28 px, at most ``video_max_pixels``, or the image maximum when that is None), then all
    frames through the processor's resize to the size it gives the first frame.
    Returns ((n, H, W, 3) uint8 ready to patchify, VideoInfo).
    """
    if isinstance(source, np.ndarray) and source.ndim == 4:
        source = list(source)
    if not isinstance(source, Sequence) or isinstance(source, (str, bytes)):
        raise InputError(f"a video is a path or a sequence of frames, not {type(source).__name__}")
    if len(source) == 0:
        raise InputError(NO_FRAMES)
    cap = settings.video_max_pixels if settings.video_max_pixels is not None else settings.fetch_max_pixels
    fetched = []
    for frame in source:
        img = load_image(frame)
        h, w = smart_resize(img.height, img.width, settings.fetch_min_pixels, cap)
        fetched.append(img.resize((w, h), BICUBIC))
    indices = list(range(len(fetched))) + [len(fetched) - 1] * (len(fetched) % TEMPORAL_PATCH)
    height, width = smart_resize(fetched[0].height, fetched[0].width, settings.min_pixels, settings.max_pixels)
    out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    for row, i in enumerate(indices):
        img = fetched[i]
        out[row] = np.asarray(img if img.size == (width, height) else img.resize((width, height), BICUBIC))
    return out, VideoInfo(len(fetched), 0.0, tuple(indices), "frames")


def frame_size(height: int, width: int, n: int, settings: EncoderSettings) -> tuple[int, int]:
    """Stage-1 size of every frame of a video file (the qwen-vl-utils step).

    An explicit per-frame ``video_max_pixels`` is the cap, as upstream; None takes qwen-vl-utils' own
    cap, which shrinks with the frame count to share a total-pixel budget.
    """
    cap = settings.video_max_pixels
    if cap is None:
        shared = VIDEO_TOTAL_PIXELS / n * TEMPORAL_PATCH
        cap = max(min(VIDEO_MAX_PIXELS, shared), int(settings.video_min_pixels * 1.05))
    return smart_resize(height, width, settings.video_min_pixels, cap)


def antialiased_bicubic(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, height, width, 3) uint8, as torchvision resizes uint8 video tensors.

    That is antialiased bicubic on float pixels, rounded and clamped to uint8; PyTorch's own
    ``interpolate`` computes it, so torchvision is not needed. One frame at a time bounds memory.
    """
    import torch
    import torch.nn.functional as F

    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            x = torch.tensor(frame, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)
            y = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
            out[i] = y[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def resize_frames(frames: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    """Both resizes of a video file's (n, H, W, 3) uint8 frames: stage 1 antialiased bicubic as
    torchvision's (upstream's), stage 2 PIL bicubic as the processor's."""
    n, height, width, _ = frames.shape
    h1, w1 = frame_size(height, width, n, settings)
    h2, w2 = smart_resize(h1, w1, settings.min_pixels, settings.max_pixels)
    stage1 = frames if (h1, w1) == (height, width) else antialiased_bicubic(frames, h1, w1)
    if (h2, w2) == (h1, w1):
        return stage1
    out = np.empty((n, h2, w2, 3), dtype=np.uint8)
    for i, frame in enumerate(stage1):
        out[i] = np.asarray(Image.fromarray(frame).resize((w2, h2), BICUBIC))
    return out


def preprocess_video(
    source,
    settings: EncoderSettings,
    backend: str | None = None,
    start=None,
    end=None,
    probe: Probe | None = None,
) -> Visual:
    """Everything from a user's video (a file, :class:`SampledFrames` or a list of frames) to
    vision-tower input."""
    if isinstance(source, SampledFrames):
        return patchify(resize_frames(source.frames, settings))
    if isinstance(source, (str, os.PathLike)):
        frames, _ = read_frames(source, settings, backend, start, end, probe)
        return patchify(resize_frames(frames, settings))
    return patchify(frame_list(source, settings)[0])
