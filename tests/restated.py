"""Upstream UNITE's input path restated from its description (shared/docs/unite-model.md), written
apart from the package so tests compare the package against something it does not share code with.

Upstream runs qwen-vl-utils (``fetch_image``, ``fetch_video``) and then the Qwen2-VL processor.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

FACTOR = 28
IMAGE_MIN = 4 * 28 * 28
IMAGE_MAX = 16384 * 28 * 28
VIDEO_MIN = 128 * 28 * 28
VIDEO_MAX = 768 * 28 * 28
VIDEO_TOTAL = 24576 * 28 * 28


def smart_resize(height, width, min_pixels, max_pixels):
    h = max(FACTOR, round(height / FACTOR) * FACTOR)
    w = max(FACTOR, round(width / FACTOR) * FACTOR)
    if h * w > max_pixels:
        b = math.sqrt(height * width / max_pixels)
        h = max(FACTOR, math.floor(height / b / FACTOR) * FACTOR)
        w = max(FACTOR, math.floor(width / b / FACTOR) * FACTOR)
    elif h * w < min_pixels:
        b = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * b / FACTOR) * FACTOR, math.ceil(width * b / FACTOR) * FACTOR
    return h, w


def video_frame_size(height, width, nframes, max_pixels=None, min_pixels=VIDEO_MIN):
    """``fetch_video``'s size for a file's frames: the shared total budget, unless the caller gave a
    per-frame ``max_pixels``, which then is the cap."""
    cap = max(min(VIDEO_MAX, VIDEO_TOTAL / nframes * 2), int(min_pixels * 1.05))
    if max_pixels is not None:
        cap = max_pixels
    return smart_resize(height, width, min_pixels, cap)


def _cubic(x, a=-0.5):
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = a * (((x - 5) * x + 8) * x - 4)
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _aa_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of antialiased bicubic: the kernel (a = -0.5) stretched by the
    downscale factor, centred on each output pixel's centre, normalised to sum 1."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        w = _cubic((np.arange(lo, hi) - centre + 0.5) / stretch)
        weights[i, lo:hi] = w / w.sum()
    return weights


def antialiased_bicubic(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, height, width, 3) float64, before rounding (torchvision rounds and
    clamps to uint8); computed in float64, so it differs from a float32 kernel only near .5."""
    rows, cols = _aa_weights(frames.shape[1], height), _aa_weights(frames.shape[2], width)
    x = frames.astype(np.float64)
    return np.stack([np.stack([rows @ f[..., c] @ cols.T for c in range(3)], axis=-1) for f in x])


def fetch_image(img: Image.Image, min_pixels=IMAGE_MIN, max_pixels=IMAGE_MAX) -> Image.Image:
    h, w = smart_resize(img.height, img.width, min_pixels, max_pixels)
    return img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)


def frame_list(frames, max_pixels, min_pixels=256 * 28 * 28, processor_max=1280 * 28 * 28) -> np.ndarray:
    """A video given as frames: each through ``fetch_image`` (with the video's max), the list padded
    to even with its last frame, then every frame resized by the processor to the first one's size."""
    images = [fetch_image(Image.fromarray(f), max_pixels=max_pixels) for f in frames]
    if len(images) % 2:
        images.append(images[-1])
    h, w = smart_resize(images[0].height, images[0].width, min_pixels, processor_max)
    return np.stack([np.asarray(im.resize((w, h), Image.Resampling.BICUBIC)) for im in images])


def frame_count(total: int, video_fps: float, fps=1.0, min_frames=4, max_frames=32) -> int:
    """``fetch_video``'s frame count: the clip's length at ``fps``, within [min, max] frames, even."""
    lo = math.ceil(min_frames / 2) * 2
    hi = math.floor(max_frames / 2) * 2
    return round(min(max(total / video_fps * fps, lo), hi) / 2) * 2


def sample_frames(path, **rule) -> np.ndarray:
    """A file's frames as upstream reads them: evenly spaced indices (linspace, rounded), decoded by
    decord, or by PyAV (every frame decoded, then picked) where decord is not installed."""
    try:
        import decord
    except ImportError:
        decord = None
    if decord is not None:
        reader = decord.VideoReader(str(path))
        total, video_fps = len(reader), reader.get_avg_fps()
        idx = np.linspace(0, total - 1, frame_count(total, video_fps, **rule)).round().astype(int)
        return reader.get_batch(idx.tolist()).asnumpy()
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        video_fps = float(stream.average_rate)
    idx = np.linspace(0, len(frames) - 1, frame_count(len(frames), video_fps, **rule)).round().astype(int)
    return np.stack([frames[i] for i in idx])
