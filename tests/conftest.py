"""Shared fixtures: a tiny random Qwen2-VL, generated images and index-coded videos."""

from __future__ import annotations

from pathlib import Path

# PyAV before decord: once decord's bundled FFmpeg is loaded first, PyAV binds to it and cannot open
# the libvpx encoder that the WebM fixtures need (decoding is unaffected either way).
import av
import numpy as np
import pytest

BITS = 8  # a frame's index is written as 8 black/white vertical bars
BAR = 16


def index_pixels(i: int, height: int = 64, width: int = BITS * BAR) -> np.ndarray:
    """An RGB frame showing ``i`` in binary as white bars (read back by :func:`frame_index`)."""
    frame = np.zeros((height, width, 3), np.uint8)
    for b in range(BITS):
        if (i >> b) & 1:
            frame[:, b * BAR : (b + 1) * BAR] = 255
    return frame


def write_index_video(
    path: Path, n_frames: int, fps: int = 10, height: int = 64, width: int = BITS * BAR, pix_fmt: str = "yuv420p"
) -> Path:
    """An H.264 clip whose frame i shows i in binary, so decoded frames reveal their index."""

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"crf": "12", "g": "4"}
        for i in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(index_pixels(i, height, width), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_empty_video(path: Path) -> Path:
    """A valid MP4 header with a video track declared and no frame in it."""

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    assert path.stat().st_size > 0
    return path


def frame_index(frame: np.ndarray) -> int:
    """Read back the index drawn by :func:`write_index_video` (centre of each bar)."""
    return sum(1 << b for b in range(BITS) if frame[:, b * BAR + 4 : (b + 1) * BAR - 4].mean() > 128)


def reference_image_processor(min_pixels: int, max_pixels: int):
    """transformers' numpy/PIL Qwen2-VL image processor (the PIL class from 5.x on; the slow class before)."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as cls
    return cls(min_pixels=min_pixels, max_pixels=max_pixels)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Model fingerprints and other caches go to a folder of the test session, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from unite_search.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def encoder(tiny_dir):
    from unite_search import Encoder

    return Encoder.load(tiny_dir, device="cpu", workers=2)


@pytest.fixture(scope="session")
def nan_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny model with the embedding of NAN_CHAR set to NaN: every text holding it, and only those,
    comes out of the model as NaN (as from damaged weights, or float16 overflowing)."""
    import shutil

    from corpora import NAN_CHAR
    from safetensors.numpy import load_file, save_file
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("nan") / "model"
    shutil.copytree(tiny_dir, folder)
    token = PreTrainedTokenizerFast.from_pretrained(folder).convert_tokens_to_ids(NAN_CHAR)
    (weights,) = folder.glob("*.safetensors")
    tensors = load_file(weights)
    (name,) = [k for k in tensors if k.endswith("embed_tokens.weight")]
    tensors[name] = tensors[name].copy()
    tensors[name][token] = np.nan
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """A photo-like image and two videos on disk."""
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:240, 0:320]
    img = np.stack([(xx * 0.8) % 256, (yy * 1.1) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(root / "photo.png")
    Image.fromarray(img[::-1, ::2].copy()).save(root / "other.jpg", quality=95)
    return {
        "image": root / "photo.png",
        "image2": root / "other.jpg",
        "video": write_index_video(root / "clip.mp4", 40, fps=10),
        "video2": write_index_video(root / "short.mp4", 6, fps=2, height=96),
    }
