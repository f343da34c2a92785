"""The upstream demo similarities with the real Unite-Base-2B weights (bf16, on a GPU).

Set UNITE_MODEL_DIR to a local copy of friedrichor/Unite-Base-Qwen2-VL-2B and UNITE_DEMO_DIR to a
folder holding the upstream demo files described by its ``demo.json``:
``{"text_image": {"text": ..., "image": ...}, "text_video": {"text": ..., "video": ...},
"fused": {"a": {"image": ..., "text": ...}, "b": {"image": ..., "text": ...}}}`` (paths relative to it).
"""

import json
import os
from pathlib import Path

import pytest

MODEL_DIR = os.environ.get("UNITE_MODEL_DIR")
DEMO_DIR = os.environ.get("UNITE_DEMO_DIR")
EXPECTED = {"text_image": 0.7500, "text_video": 0.5664, "fused": 0.7695}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (
            MODEL_DIR
            and DEMO_DIR
            and Path(MODEL_DIR, "config.json").is_file()
            and Path(DEMO_DIR, "demo.json").is_file()
        ),
        reason="real weights absent: set UNITE_MODEL_DIR and UNITE_DEMO_DIR (with demo.json)",
    ),
]


def _abs(item):
    return {k: (str(Path(DEMO_DIR, v)) if k in ("image", "video") else v) for k, v in item.items()}


@pytest.fixture(scope="module")
def demo_encoder():
    from unite_search import Encoder

    return Encoder.load(MODEL_DIR)


@pytest.mark.parametrize("pair", list(EXPECTED))
def test_demo_similarity(demo_encoder, pair):
    demo = json.loads(Path(DEMO_DIR, "demo.json").read_text())[pair]
    if pair == "fused":
        a, b = _abs(demo["a"]), _abs(demo["b"])
    else:
        media = "image" if pair == "text_image" else "video"
        a, b = {"text": demo["text"]}, _abs({media: demo[media]})
    vecs = demo_encoder.encode([a, b])
    assert float(vecs[0] @ vecs[1]) == pytest.approx(EXPECTED[pair], abs=0.01)
