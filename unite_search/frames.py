"""Video frames to the vision tower's sizes, as upstream resizes them.

A video file's sampled frames take two resizes (:func:`resize_frames`): the per-frame pixel cap of the
qwen-vl-utils step (antialiased bicubic, as torchvision resizes uint8 video tensors), then the processor's
resize with UNITE's budget (PIL bicubic, which raises small frames). A video given as a list of frames takes
upstream's other path (:func:`frame_list`): each frame through the image fetch step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import InputError
from .image import BICUBIC, load_image, smart_resize
from .settings import TEMPORAL_PATCH, EncoderSettings

# qwen-vl-utils bounds that enter the per-frame cap alongside the user's.
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28
NO_FRAMES = "video has no frames"


@dataclass(frozen=True)
class VideoInfo:
    total_frames: int
    fps: float
    indices: tuple[int, ...]
    backend: str
    decoded: int | None = None  # frames PyAV decoded for this call, counting pass included (None: not measured)


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
