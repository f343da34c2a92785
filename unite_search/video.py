"""Video decoding, frame sampling and preprocessing.

Decodes with decord when installed, else PyAV. Frames are sampled by fps (clamped to a frame range)
or to a fixed count, both with the linspace rule; then each frame goes through a per-frame pixel cap
(the qwen-vl-utils step) and the processor's resize with UNITE's budget (which raises small frames).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import InputError, MissingDependencyError
from .image import BICUBIC, Visual, load_image, patchify, smart_resize
from .settings import TEMPORAL_PATCH, EncoderSettings

# qwen-vl-utils bounds that enter the per-frame cap alongside the user's.
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28


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
        raise InputError("video has no frames")
    if n > total:
        return np.concatenate([np.arange(total), np.full(n - total, total - 1)]).astype(np.int64)
    if sampler == "segment-middle":
        return np.floor((np.arange(n) + 0.5) * total / n).astype(np.int64)
    return np.linspace(0, total - 1, n).round().astype(np.int64)


@dataclass(frozen=True)
class VideoInfo:
    total_frames: int
    fps: float
    indices: tuple[int, ...]
    backend: str


def _backend(name: str | None) -> str:
    if name in (None, "auto"):
        try:
            import decord  # noqa: F401
        except ImportError:
            name = "av"
        else:
            name = "decord"
    if name not in ("decord", "av"):
        raise ValueError(f"video backend must be 'decord', 'av' or 'auto', not {name!r}")
    return name


def _read_decord(path: str, settings: EncoderSettings):
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError (or RuntimeError) for any bad input
        raise InputError(f"cannot decode video: {exc}", source=path) from exc
    total, fps = len(vr), float(vr.get_avg_fps())
    idx = sample_indices(total, frame_count(total, fps, settings), settings.sampler)
    try:
        frames = vr.get_batch(idx.tolist()).asnumpy()
    except Exception as exc:
        raise InputError(f"cannot decode video frames: {exc}", source=path) from exc
    return frames, VideoInfo(total, fps, tuple(idx.tolist()), "decord")


def _read_av(path: str, settings: EncoderSettings):
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError("decoding video needs PyAV or decord: pip install av") from exc
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError("file has no video stream", source=path)
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            total = stream.frames
            if total <= 0:  # the container stores no frame count: decode once to count
                total = sum(1 for _ in container.decode(stream))
                container.seek(0)
            idx = sample_indices(total, frame_count(total, fps, settings), settings.sampler)
            wanted = set(idx.tolist())
            last = int(idx.max())
            got: dict[int, np.ndarray] = {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except InputError:
        raise
    except Exception as exc:  # PyAV raises one class per FFmpeg error code
        raise InputError(f"cannot decode video: {exc}", source=path) from exc
    if not got:
        raise InputError("no decodable frame in video", source=path)
    # Containers can over-report their frame count; reuse the last decoded frame past the real end.
    last_ok = max(got)
    frames = np.stack([got[i] if i in got else got[last_ok] for i in idx.tolist()])
    return frames, VideoInfo(total, fps, tuple(idx.tolist()), "av")


def read_frames(source, settings: EncoderSettings, backend: str | None = None):
    """Sampled frames of a video file or frame sequence: ((n, H, W, 3) uint8, VideoInfo)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError("video file not found", source=path)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise InputError("video file is empty or not a regular file", source=path)
        reader = _read_decord if _backend(backend) == "decord" else _read_av
        try:
            return reader(path, settings)
        except InputError as exc:
            if exc.source is None:
                raise InputError(exc.reason, source=path) from exc
            raise
    if isinstance(source, np.ndarray) and source.ndim == 4:
        source = list(source)
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if len(source) == 0:
            raise InputError("video has no frames")
        # Frames given by the caller are the clip: only cap their number.
        n = _round_even(settings.frames if settings.frames is not None else min(len(source), settings.max_frames))
        idx = sample_indices(len(source), n)
        imgs = [load_image(source[i]) for i in idx.tolist()]
        if len({im.size for im in imgs}) > 1:
            raise InputError("video frames differ in size")
        frames = np.stack([np.asarray(im) for im in imgs])
        return frames, VideoInfo(len(source), 0.0, tuple(idx.tolist()), "frames")
    raise InputError(f"a video is a path or a sequence of frames, not {type(source).__name__}")


def frame_size(height: int, width: int, n: int, settings: EncoderSettings) -> tuple[int, int]:
    """Stage-1 size of every frame: the per-frame pixel cap of the qwen-vl-utils step."""
    cap = max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / n * TEMPORAL_PATCH), int(settings.video_min_pixels * 1.05))
    cap = min(settings.video_max_pixels, cap)
    return smart_resize(height, width, settings.video_min_pixels, cap)


def resize_frames(frames: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    """Both resizes on (n, H, W, 3) uint8 frames, PIL bicubic (upstream uses torchvision's)."""
    n, height, width, _ = frames.shape
    h1, w1 = frame_size(height, width, n, settings)
    h2, w2 = smart_resize(h1, w1, settings.min_pixels, settings.max_pixels)
    out = np.empty((n, h2, w2, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame).resize((w1, h1), BICUBIC)
        out[i] = np.asarray(img.resize((w2, h2), BICUBIC) if (h2, w2) != (h1, w1) else img)
    return out


def preprocess_video(source, settings: EncoderSettings, backend: str | None = None) -> Visual:
    frames, _ = read_frames(source, settings, backend)
    return patchify(resize_frames(frames, settings))
