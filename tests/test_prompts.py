import pytest

from unite_search.modality import Item, Modality, as_item
from unite_search.prompts import render

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"

CASES = [
    ({"text"}, "A dog runs.", "A dog runs.\nSummary above sentence in one word:"),
    ({"image"}, None, IMG + "\nSummary above image in one word:"),
    ({"video"}, None, VID + "\nSummary above video in one word:"),
    (
        {"image", "text"},
        "What is the name of this place?",
        IMG + "What is the name of this place?\nSummary above sentence and image in one word:",
    ),
    ({"video", "text"}, "make it night", VID + "make it night\nSummary above sentence and video in one word:"),
    ({"image", "video"}, None, IMG + VID + "\nSummary above image and video in one word:"),
]


@pytest.mark.parametrize(("mods", "text", "middle"), CASES)
def test_prompt_matches_template_exactly(mods, text, middle):
    assert render(mods, text) == HEAD + middle + TAIL


def test_prompt_accepts_enum_and_any_order():
    assert render([Modality.TEXT, Modality.VIDEO], "x") == render(["video", "text"], "x")


def test_prompt_rejects_inconsistent_text():
    with pytest.raises(ValueError):
        render({"image"}, "text given without the text modality")
    with pytest.raises(ValueError):
        render({"text"}, None)
    with pytest.raises(ValueError):
        render(set(), None)


def test_user_braces_are_not_template_fields():
    assert "{content}" in render({"text"}, "{content}")


def test_instruction_is_prepended_to_text():
    item = Item(text="make it night", video="a.mp4", instruction="Find a video that matches this change:")
    assert item.full_text == "Find a video that matches this change: make it night"
    assert item.modalities == {Modality.TEXT, Modality.VIDEO}
    assert Item(image="a.jpg", instruction="Represent the image.").modalities == {Modality.IMAGE, Modality.TEXT}


@pytest.mark.parametrize("bad", [{"text": ""}, {"text": "   "}, {}, {"txt": "x"}, {"text": 3}, 5])
def test_bad_items_are_clear_errors(bad):
    from unite_search.errors import InputError

    with pytest.raises(InputError):
        as_item(bad, index=2)
