"""Preprocessing settings: everything besides the weights that changes a vector.

Indexes record ``EncoderSettings.to_dict()`` and refuse to mix vectors made under other settings.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import ConfigError
from .prompts import PROMPT_VERSION

# How texts end and video frames are resized, recorded by every index: vectors made before these rules
# (by versions that recorded neither) differ, and such an index is refused (manifest.outdated).
RULES = {"text_ends": "stripped", "video_resize": "antialiased-bicubic"}

PATCH = 14
MERGE = 2
FACTOR = PATCH * MERGE  # 28: one merged visual token covers 28x28 pixels
TEMPORAL_PATCH = 2
PIXELS_MAX = 4 * 16384 * FACTOR * FACTOR  # a pixel bound's ceiling: four times qwen-vl-utils' own cap (51M)
FRAMES_MAX = 4096  # a frame count's ceiling
# whole numbers: a *_frames within FRAMES_MAX, a *_pixels within PIXELS_MAX
COUNTS = ("min_frames", "max_frames", "frames", "fetch_min_pixels", "fetch_max_pixels", "min_pixels", "max_pixels",
          "video_min_pixels", "video_max_pixels")  # fmt: skip


@dataclass(frozen=True)
class EncoderSettings:
    # Stage 1, images (the qwen-vl-utils fetch step every upstream path runs).
    fetch_min_pixels: int = 4 * FACTOR * FACTOR
    fetch_max_pixels: int = 16384 * FACTOR * FACTOR
    # Stage 2, images and each video frame (UNITE's processor budget: 256 to 1280 visual tokens).
    min_pixels: int = 256 * FACTOR * FACTOR
    max_pixels: int = 1280 * FACTOR * FACTOR
    # Video sampling. ``frames`` set: fixed count (benchmarks); else by fps within [min, max] frames.
    fps: float = 1.0
    min_frames: int = 4
    max_frames: int = 32
    frames: int | None = None
    sampler: Literal["linspace", "segment-middle"] = "linspace"
    # Stage 1, video frames: bounds on each frame's pixels before the processor. The max is the UNITE
    # demo's explicit per-frame cap; None takes qwen-vl-utils' own, shared out of a total-pixel budget.
    video_min_pixels: int = 128 * FACTOR * FACTOR
    video_max_pixels: int | None = 360 * 420

    def __post_init__(self) -> None:
        for name in COUNTS:  # (an index's manifest is read into these too)
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name} must be a whole number, not {value!r}")
            ceiling = FRAMES_MAX if name.endswith("frames") else PIXELS_MAX
            if value > ceiling:
                raise ConfigError(f"{name} may be at most {ceiling:,}, not {value:,}")
            object.__setattr__(self, name, int(value))  # a numpy integer as a plain one (settings go to JSON)
        if isinstance(self.fps, bool) or not isinstance(self.fps, numbers.Real) or not math.isfinite(self.fps):
            raise ConfigError(f"fps must be a finite number, not {self.fps!r}")
        object.__setattr__(self, "fps", self.fps if isinstance(self.fps, int) else float(self.fps))
        if self.sampler not in ("linspace", "segment-middle"):
            raise ConfigError(f"sampler must be 'linspace' or 'segment-middle', not {self.sampler!r}")
        if self.frames is not None and self.frames < 1:
            raise ConfigError("frames must be a positive count")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ConfigError("need 1 <= min_frames <= max_frames")
        if self.fps <= 0:
            raise ConfigError("fps must be positive")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ConfigError("need 0 < min_pixels <= max_pixels")
        if not 0 < self.fetch_min_pixels <= self.fetch_max_pixels:
            raise ConfigError("need 0 < fetch_min_pixels <= fetch_max_pixels")
        if self.video_min_pixels < 1:
            raise ConfigError("video_min_pixels must be positive")
        if self.video_max_pixels is not None and self.video_max_pixels < 1:  # below the minimum is upstream's way
            raise ConfigError("video_max_pixels must be positive (or None for qwen-vl-utils' own cap)")

    @classmethod
    def training(cls) -> EncoderSettings:
        """UNITE's training-time video settings (fps 1, 4-12 frames, 240x320 per frame)."""
        return cls(min_frames=4, max_frames=12, video_max_pixels=240 * 320)

    @classmethod
    def from_record(cls, recorded: dict[str, Any]) -> EncoderSettings:
        """The settings an index records (its manifest's ``encoder``: :meth:`to_dict` plus the model's)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in recorded.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        fixed = {"prompt_version": PROMPT_VERSION, "positions": "1d", "pooling": "last-token"}
        return {**fixed, **RULES, **asdict(self)}
