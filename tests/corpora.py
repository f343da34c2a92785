"""Generated corpora for ingest tests: every supported kind, and every kind of bad input."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx",
    ".avi": "mpeg4",
    ".m4v": "libx264",
}


def write_photo(path: Path, seed: int, size=(96, 72), fmt: str | None = None) -> Path:
    """A smooth photo-like image with noise, distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (1 + seed % 3)) % 256, (yy * (2 + seed % 5)) % 256, (xx + yy + 40 * seed) % 256], -1)
    img = np.clip(base + rng.integers(-15, 15, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt)
    return path


def write_clip(path: Path, n_frames: int, fps: int = 8, seed: int = 0, size=(64, 48)) -> Path:
    """A short clip of moving colour, in the container its extension names."""
    import av

    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "mp4" if path.suffix == ".m4v" else None
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(CODECS[path.suffix], rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n_frames):
            frame = np.zeros((h, w, 3), np.uint8)
            frame[..., seed % 3] = (i * 9 + seed * 40) % 256
            frame[:, (i * 3) % w :, (seed + 1) % 3] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_bomb_png(path: Path, side: int = 40000) -> Path:
    """A PNG whose header claims side x side pixels: PIL refuses it as a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    payload = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    path.write_bytes(payload + chunk(b"IEND", b""))
    return path


LONG_TEXT = "\n\n".join(f"Paragraph {i}. " + "The quick brown fox jumps over the lazy dog. " * 4 for i in range(6))


def make_good_corpus(root: Path) -> dict[str, object]:
    """Every supported kind, nested folders, a sidecar caption, a manifest with a composed item,
    a duplicate file at two paths and a long video (segmented with segment_seconds=4)."""
    images = {}
    for i, rel in enumerate(
        ["photos/a.jpg", "photos/b.png", "photos/nested/deep/c.webp", "d.bmp", "e.gif", "f.tiff", "g.jpeg", "h.tif"]
    ):
        images[rel] = write_photo(root / rel, seed=i)
    write_photo(root / "photos/really_png.jpg", seed=20, fmt="PNG")  # a PNG named .jpg is fine
    (root / "dups").mkdir()
    shutil.copy(root / "photos/a.jpg", root / "dups/a_copy.jpg")
    (root / "photos/a.txt").write_text("a gradient photo of stripes\n")  # sidecar caption of a.jpg
    for i, ext in enumerate(CODECS):
        write_clip(root / f"clips/clip{ext}", 12, fps=6, seed=i)
    write_clip(root / "clips/long/long.mp4", 80, fps=8, seed=9)  # 10 s: segments of 4 s with 1 s overlap
    (root / "clips/clip.txt").write_text("colour bars moving right")  # sidecar of every clip.* video
    (root / "notes").mkdir()
    (root / "notes/short.txt").write_text("A short note about reindeer in the snow.")
    (root / "notes/long.md").write_text(LONG_TEXT)
    lines = [
        {"id": "edit-1", "text": "the same picture at night", "image": "photos/b.png", "metadata": {"split": "test"}},
        {"id": "plain-1", "text": "a declared text item"},
        {"id": "vt-1", "text": "a clip with a caption", "video": "clips/clip.mp4"},
    ]
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "README.rst").write_text("ignored: not an indexed extension")
    (root / ".hidden").mkdir()
    write_photo(root / ".hidden/secret.png", seed=30)
    return {"images": images}


def make_bad_corpus(root: Path) -> dict[str, str]:
    """One file of each kind of bad input, beside two good ones. Returns rel path -> expected stage."""
    from conftest import write_empty_video

    write_photo(root / "good.png", seed=1)
    (root / "note.txt").write_text("a perfectly good text")
    bad: dict[str, str] = {}
    for rel in ("empty.jpg", "empty.mp4", "empty.txt"):
        (root / rel).write_bytes(b"")
        bad[rel] = "read"
    jpeg = root / "whole.jpg"
    write_photo(jpeg, seed=2, size=(300, 200))
    (root / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 3])
    jpeg.unlink()
    bad["truncated.jpg"] = "decode"
    clip = write_clip(root / "whole.mp4", 24, fps=6)
    (root / "truncated.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    clip.unlink()
    bad["truncated.mp4"] = "read"
    rng = np.random.default_rng(0)
    (root / "noise.png").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "noise.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "text_named.jpg").write_text("this is text, not a JPEG")
    bad.update({"noise.png": "read", "noise.mp4": "read", "text_named.jpg": "read"})
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    bad["latin1.txt"] = "read"
    write_bomb_png(root / "bomb.png")
    bad["bomb.png"] = "read"
    write_empty_video(root / "noframes.mp4")
    bad["noframes.mp4"] = "read"
    write_photo(root / "locked.png", seed=3)
    bad["locked.png"] = "read"  # made unreadable by the test
    write_photo(root / "vanishing.png", seed=4)
    bad["vanishing.png"] = "decode"  # deleted by the test after the read stage
    return bad


def write_audio_only(path: Path, seconds: float = 0.5) -> Path:
    """An MP4 holding one AAC audio track and no video."""
    import av

    rate, samples = 16000, 1024
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(int(seconds * rate / samples) + 1):
            tone = np.sin(np.arange(samples) / 8.0 + i).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * samples
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated_mp4(path: Path) -> Path:
    """The first half of a real clip: its index (written last) is gone, as after an interrupted copy."""
    whole = write_clip(path.with_name(f"whole-{path.name}"), 24, fps=6)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return path


def write_damaged_mp4(path: Path, seed: int = 0) -> Path:
    """An MP4 file type header followed by random bytes: it looks like a video, no decoder can open it."""
    rng = np.random.default_rng(seed)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + rng.bytes(4000))
    return path


NAN_CHAR = "~"  # the character whose embedding the ``nan_dir`` model (conftest.py) has set to NaN


def make_nan_corpus(root: Path) -> None:
    """Two items the ``nan_dir`` model cannot encode (a text, and a text with one such passage among
    finite ones) beside a text and a photo it can."""
    root.mkdir(parents=True)
    (root / "fine.txt").write_text("a plain sentence about a harbour")
    (root / "bad.txt").write_text(f"a sentence with a {NAN_CHAR} in it")
    paragraphs = [f"Paragraph {i}: " + "words " * 60 for i in range(10)] + [f"last {NAN_CHAR}"]  # > a Ray batch
    (root / "long.md").write_text("\n\n".join(paragraphs))
    write_photo(root / "photo.png", seed=3)
