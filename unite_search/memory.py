"""Predicted memory of decoding one input, from what a header read tells (size, frame count).

Decoding is admitted by these predictions (:class:`~unite_search.batching.ByteBudget`), so the
bytes held by inputs decoded or prepared and not yet encoded stay within one budget. A prediction
errs high: the decoder's full-size output may be copied once (EXIF rotation, a mode conversion, a
frame stack), then come both resizes and the float32 patches the model reads.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError
from .settings import TEMPORAL_PATCH, EncoderSettings

MEMORY_BYTES = 2 << 30  # default budget for decoded inputs not yet encoded
DECODED_PIXEL = 4  # bytes a decoder may hold per pixel (RGBA, CMYK, 16-bit grey) before conversion
TEXT_COST = 64 << 10  # a passage and its token ids
UNKNOWN_COST = 256 << 20  # an input whose size no header told: assume a large photo


def prepared_bytes(height: int, width: int, frames: int) -> int:
    """float32 patch rows of ``frames`` frames of ``height x width`` (a still image fills 2 frames)."""
    return (frames + frames % TEMPORAL_PATCH) * height * width * 3 * 4


def image_cost(width: int | None, height: int | None, settings: EncoderSettings) -> int:
    """Peak bytes while one image is decoded and prepared."""
    from .image import smart_resize

    if not width or not height:
        return UNKNOWN_COST
    decoded = 2 * width * height * DECODED_PIXEL  # the decoder's output and one full-size copy
    try:
        h1, w1 = smart_resize(height, width, settings.fetch_min_pixels, settings.fetch_max_pixels)
        h2, w2 = smart_resize(h1, w1, settings.min_pixels, settings.max_pixels)
    except InputError:
        return decoded  # refused after decoding (aspect ratio): the decode is the whole cost
    return decoded + h1 * w1 * 3 + 2 * h2 * w2 * 3 + 2 * prepared_bytes(h2, w2, 1)


def video_cost(width: int | None, height: int | None, frames: int | None, settings: EncoderSettings) -> int:
    """Peak bytes while ``frames`` sampled frames of one video (or segment) are decoded and prepared."""
    from .frames import frame_size
    from .image import smart_resize

    n = frames or settings.frames or settings.max_frames
    n += n % 2  # the sampler reads an even count (a temporal patch is two frames)
    if not width or not height:
        return UNKNOWN_COST
    decoded = 2 * n * width * height * 3  # decoded frames and their stacked copy
    try:
        h1, w1 = frame_size(height, width, n, settings)
        h2, w2 = smart_resize(h1, w1, settings.min_pixels, settings.max_pixels)
    except InputError:
        return decoded
    return decoded + 2 * n * h1 * w1 * 3 + 2 * n * h2 * w2 * 3 + 2 * prepared_bytes(h2, w2, n)


def predicted_bytes(value, settings: EncoderSettings) -> int:
    """Peak bytes of preparing one item (an :class:`~unite_search.Item`, dict or text), from its media's
    headers (nothing is decoded)."""
    from .modality import as_item

    try:
        item = as_item(value)
    except InputError:
        return TEXT_COST  # prepare() raises the error, naming the item
    cost = TEXT_COST
    if item.image is not None:
        width, height = _image_header(item.image)
        cost += image_cost(width, height, settings) if width else UNKNOWN_COST
    if item.video is not None:
        width, height, frames = _video_header(item.video, settings)
        cost += video_cost(width, height, frames, settings) if width else UNKNOWN_COST
    return cost


def _image_header(source) -> tuple[int, int]:
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.size
    if isinstance(source, np.ndarray) and source.ndim >= 2:
        return int(source.shape[1]), int(source.shape[0])
    try:
        with Image.open(source) as img:  # reads the header only
            return img.size
    except Exception:  # noqa: BLE001  unreadable: prepare() raises the real error, naming the file
        return 0, 0


def _video_header(source, settings: EncoderSettings) -> tuple[int, int, int]:
    if isinstance(source, (str, os.PathLike)):
        try:
            import av

            with av.open(os.fspath(source)) as container:  # the stream header: no frame is decoded
                stream = container.streams.video[0]
                width, height = stream.codec_context.width, stream.codec_context.height
        except Exception:  # noqa: BLE001  unreadable: prepare() raises the real error, naming the file
            return 0, 0, 0
        return int(width or 0), int(height or 0), settings.frames or settings.max_frames
    from .video import SampledFrames

    if isinstance(source, SampledFrames):
        n, height, width = source.frames.shape[:3]
        return int(width), int(height), int(n)
    try:  # a list of frames: every one is kept, an odd count padded to even
        width, height = _image_header(source[0])
        return width, height, len(source) + len(source) % 2
    except Exception:  # noqa: BLE001  not frames: prepare() raises the real error
        return 0, 0, 0
