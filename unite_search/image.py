"""Image preprocessing in numpy/PIL: UNITE's two resizes, CLIP normalisation and patchify.

Stage 1 mirrors the qwen-vl-utils fetch step (round to multiples of 28 within [4, 16384] tokens);
stage 2 mirrors the Qwen2-VL processor with UNITE's budget (256 to 1280 tokens). Both matter: the
second resize sees the first one's output, not the original.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .corpus import other_kind
from .errors import InputError
from .settings import FACTOR, MERGE, PATCH, TEMPORAL_PATCH, EncoderSettings

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT = 200
BICUBIC = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class Visual:
    """Patchified pixels of one image or video, ready for the vision tower."""

    pixel_values: np.ndarray  # (grid_t * grid_h * grid_w, 3 * 2 * 14 * 14) float32
    grid_thw: tuple[int, int, int]

    @property
    def tokens(self) -> int:
        """Merged visual tokens this input occupies in the language model."""
        t, h, w = self.grid_thw
        return t * h * w // (MERGE * MERGE)


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR):
    """Target (height, width): multiples of ``factor`` with area in [min, max], aspect kept."""
    if min(height, width) < 1:
        raise InputError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise InputError(
            f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is above {MAX_ASPECT}:1, "
            "which UNITE's vision tower does not take; crop the image first"
        )
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB, the way a viewer shows it (16-bit scaled, not clipped; float as upstream converts it,
    clipped and truncated)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            # the 16-bit range onto 8 bits, rounded (= rint(x / 257) for integers), in one 4-byte copy worked in
            # place: float64 copies held 2.6x the memory budget's prediction
            arr = np.clip(arr, 0, 65535) if img.mode == "I" else arr.astype(np.int32)
            arr += 128
            arr //= 257
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_image(source) -> Image.Image:
    """Open a path, PIL image or (H, W, 3) uint8 array as an upright RGB image."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] != 3):
            raise InputError(f"an image array must be (H, W, 3) or (H, W) uint8, got {source.shape} {source.dtype}")
        return Image.fromarray(source).convert("RGB")
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError("image file not found", source=path)
        if not os.path.isfile(path):
            raise InputError("not a regular file", source=path)
        try:  # a PNG is read once, its chunks' checksums checked in memory before it is decoded from there
            data = None
            with open(path, "rb") as fh:
                if fh.read(8) == PNG_SIGNATURE:
                    fh.seek(0)
                    data = fh.read()
        except OSError:  # Pillow's open below says what is wrong
            data = None
        damaged = png_damage(memoryview(data)[8:]) if data is not None else None
        if damaged is not None:
            raise InputError(DAMAGED_PNG, source=path, detail=f"the {damaged} chunk's CRC does not match its bytes")
        try:
            img = Image.open(io.BytesIO(data) if data is not None else path)  # (BytesIO shares the bytes)
            img.load()
        except Image.DecompressionBombError as exc:
            raise InputError(f"image too large to decode safely ({exc})", source=path) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            # a clip (or a text) given as an image is not a damaged image: say what it is
            reason = other_kind(path, "image") or f"cannot read image: {image_reason(exc)}"
            raise InputError(reason, source=path, detail=str(exc)) from exc
    else:
        raise InputError(f"an image is a path, a PIL image or a uint8 array, not {type(source).__name__}")
    try:
        img.load()  # a PIL image opened lazily by the caller is decoded here
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image: {image_reason(exc)}", detail=str(exc)) from exc
    with contextlib.suppress(Exception):  # a broken EXIF block leaves the pixels as stored
        img = ImageOps.exif_transpose(img)
    try:
        return to_rgb(img)
    except ValueError as exc:  # a mode Pillow has no conversion for ("La", "PA" in some versions)
        raise InputError(f"an image in PIL mode {img.mode} cannot be converted to RGB", detail=str(exc)) from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DAMAGED_PNG = "damaged image (a PNG chunk fails its checksum)"


def png_damage(chunks) -> str | None:
    """The first chunk whose CRC does not match its bytes, of a PNG's bytes after its signature (None: all
    match, or cut short, which the decoder reports). Pillow checks no CRC of the image data: one flipped bit
    there can decode to other pixels without a word."""
    view, pos = memoryview(chunks), 0
    while pos + 8 <= len(view):
        length = int.from_bytes(view[pos : pos + 4], "big")
        end = pos + 8 + length  # the chunk's type and data run from pos + 4 to end, its CRC after
        if end + 4 > len(view):
            return None
        kind = bytes(view[pos + 4 : pos + 8])
        if zlib.crc32(view[pos + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            return kind.decode("latin-1")
        if kind == b"IEND":
            return None
        pos = end + 4
    return None


def image_reason(exc: BaseException) -> str:
    """What Pillow's exception says about the file, in the same words every time (its own message holds the
    path, byte counts, decoder codes: it goes to the failure's ``detail``)."""
    said = str(exc).lower()
    if "closed image" in said:
        return "the PIL image was closed before it was read"
    if "truncated" in said or isinstance(exc, EOFError):
        return "truncated image (an incomplete copy or download)"
    if "cannot identify image file" in said:
        return "damaged or not an image (no decoder can open it)"
    return "damaged image (its pixels cannot be decoded)"


def fetch_resize(img: Image.Image, settings: EncoderSettings) -> Image.Image:
    """Stage 1 (the qwen-vl-utils step)."""
    h, w = smart_resize(img.height, img.width, settings.fetch_min_pixels, settings.fetch_max_pixels)
    return img.resize((w, h), BICUBIC)


def processor_resize(img: Image.Image, settings: EncoderSettings) -> Image.Image:
    """Stage 2 (the Qwen2-VL processor with UNITE's pixel budget)."""
    h, w = smart_resize(img.height, img.width, settings.min_pixels, settings.max_pixels)
    return img.resize((w, h), BICUBIC)


# A row of pixel_values is (C, temporal, 14, 14): channel c fills columns [c*392, (c+1)*392).
_ROW_CHANNEL = np.repeat(np.arange(3), TEMPORAL_PATCH * PATCH * PATCH)
_ROW_SCALE = (1.0 / (255.0 * np.array(CLIP_STD)))[_ROW_CHANNEL].astype(np.float32)
_ROW_SHIFT = (-np.array(CLIP_MEAN) / np.array(CLIP_STD))[_ROW_CHANNEL].astype(np.float32)


def patchify(frames: np.ndarray) -> Visual:
    """(T, H, W, 3) uint8 frames -> CLIP-normalised rows of 3*2*14*14 values, in the vision tower's order.

    Pixels are reordered while still uint8, then normalised, (x / 255 - mean) / std, in one pass.
    """
    if frames.shape[0] % TEMPORAL_PATCH:
        # a still image, or an odd frame count: the last frame fills the temporal patch
        pad = TEMPORAL_PATCH - frames.shape[0] % TEMPORAL_PATCH
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    t, h, w, c = frames.shape
    gt, gh, gw = t // TEMPORAL_PATCH, h // PATCH, w // PATCH
    x = frames.reshape(gt, TEMPORAL_PATCH, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH, c)
    # -> (gt, gh/m, gw/m, m, m, C, tp, p, p): merge groups contiguous, channels outermost in a row
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    rows = x.reshape(gt * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH).astype(np.float32)
    rows *= _ROW_SCALE
    rows += _ROW_SHIFT
    return Visual(rows, (gt, gh, gw))


def preprocess_image(source, settings: EncoderSettings) -> Visual:
    """Everything from a user's image to vision-tower input."""
    img = processor_resize(fetch_resize(load_image(source), settings), settings)
    return patchify(np.asarray(img)[None])
