"""The vocabulary: modalities and the items the encoder embeds."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputError


class Modality(str, enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"

    def __str__(self) -> str:
        return self.value


# Canonical order (text, image, video): the prompt lists modality words in it.
ORDER = (Modality.TEXT, Modality.IMAGE, Modality.VIDEO)

ImageLike = str | os.PathLike | Any  # path, PIL.Image.Image or (H, W, 3) uint8 array
VideoLike = str | os.PathLike | Sequence[Any]  # path or a sequence of frames


@dataclass(frozen=True)
class Item:
    """One thing to embed: any combination of text, one image and one video.

    ``instruction`` (optional) is prepended to the text, e.g.
    ``Item(video="a.mp4", text="make it night", instruction="Find a video that matches this change:")``.
    """

    text: str | None = None
    image: ImageLike | None = None
    video: VideoLike | None = None
    instruction: str | None = None

    @property
    def modalities(self) -> frozenset[Modality]:
        found = set()
        if self.full_text is not None:
            found.add(Modality.TEXT)
        if self.image is not None:
            found.add(Modality.IMAGE)
        if self.video is not None:
            found.add(Modality.VIDEO)
        return frozenset(found)

    @property
    def full_text(self) -> str | None:
        """The text the model sees: instruction and text joined by one space, the text without its
        leading and trailing whitespace (so ``"a red kite\\n"`` and ``"a red kite"`` are one text)."""
        text = self.text.strip() if self.text is not None else None
        parts = [p for p in (self.instruction, text) if p is not None]
        if not parts:
            return None
        if len(parts) == 2 and not parts[0].endswith((" ", "\n")):
            return parts[0] + " " + parts[1]
        return "".join(parts)

    def describe(self) -> str:
        """A short human-readable label used in error messages and progress output."""
        bits = []
        for name in ("image", "video"):
            value = getattr(self, name)
            if value is not None:
                label = os.fspath(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__
                bits.append(f"{name}={label}")
        if self.full_text is not None:
            text = self.full_text
            bits.append(f"text={text[:40]!r}" + ("..." if len(text) > 40 else ""))
        return ", ".join(bits) or "empty item"


_KEYS = {"text", "image", "video", "instruction"}


def as_item(value: Item | Mapping[str, Any] | str, index: int | None = None) -> Item:
    """Coerce a user value into an :class:`Item`; a bare string is a text item."""
    if isinstance(value, Item):
        item = value
    elif isinstance(value, str):
        item = Item(text=value)
    elif isinstance(value, Mapping):
        unknown = set(value) - _KEYS
        if unknown:
            raise InputError(f"unknown key(s) {sorted(unknown)}; an item takes {sorted(_KEYS)}", index=index)
        item = Item(**{k: value[k] for k in _KEYS if k in value})
    else:
        raise InputError(
            f"an item is a dict with text/image/video keys, an Item or a string, not {type(value).__name__}",
            index=index,
        )
    for name in ("text", "instruction"):
        field = getattr(item, name)
        if field is not None and not isinstance(field, str):
            raise InputError(f"{name} must be a string, not {type(field).__name__}", index=index)
    if item.text is not None and not item.text.strip():
        raise InputError("text is empty; give some text or leave the key out", index=index)
    if item.instruction is not None and not item.instruction.strip():
        raise InputError("instruction is empty; give some text or leave the key out", index=index)
    if not item.modalities:
        raise InputError("item has none of text, image or video", index=index)
    return item
