"""UNITE's prompt, as data.

One template serves queries and candidates alike. The content is the vision block followed by the
text; the modality words list text first. Each vision block carries a single pad token here; the
encoder repeats it once per merged visual token when it builds input ids.
"""

from __future__ import annotations

from collections.abc import Iterable

from .modality import ORDER, Modality

# Bump when anything below changes: indexes record it and refuse to mix versions.
PROMPT_VERSION = "unite-v1"

TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{content}\nSummary above {modalities} in one word:<|im_end|>\n"
    "<|im_start|>assistant\n<|endoftext|>"
)

MODALITY_WORDS = {Modality.TEXT: "sentence", Modality.IMAGE: "image", Modality.VIDEO: "video"}

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_BLOCKS = {
    Modality.IMAGE: f"<|vision_start|>{IMAGE_PAD}<|vision_end|>",
    Modality.VIDEO: f"<|vision_start|>{VIDEO_PAD}<|vision_end|>",
}
# Vision markers in user text would be read as placeholders for pixels that are not there.
RESERVED_TOKENS = ("<|vision_start|>", "<|vision_end|>", IMAGE_PAD, VIDEO_PAD, "<|vision_pad|>")
# The token whose final hidden state is the embedding: the template's last token.
POOL_TOKEN = "<|endoftext|>"


def render(modalities: Iterable[Modality | str], text: str | None = None) -> str:
    """The exact UNITE prompt for an item with these modalities.

    >>> render({"image", "text"}, "What is this place?").split("user\\n")[1].split("<|im_end|>")[0]
    '<|vision_start|><|image_pad|><|vision_end|>What is this place?\\nSummary above sentence and image in one word:'
    """
    mods = {Modality(m) for m in modalities}
    if not mods:
        raise ValueError("an item needs at least one modality")
    if (Modality.TEXT in mods) != (text is not None):
        raise ValueError("text must be given exactly when the modalities include text")
    ordered = [m for m in ORDER if m in mods]
    content = "".join(VISION_BLOCKS[m] for m in ordered if m in VISION_BLOCKS) + (text or "")
    words = " and ".join(MODALITY_WORDS[m] for m in ordered)
    return TEMPLATE.format(content=content, modalities=words)
