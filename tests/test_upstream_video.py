"""The video path against restatements of upstream's (tests/restated.py): the stage-1 kernel, the
per-frame cap, frames given as a list, and display rotation."""

import shutil
import subprocess

import av
import numpy as np
import pytest
import restated
from conftest import frame_index, write_index_video
from PIL import Image

from unite_search.frames import antialiased_bicubic, frame_list, frame_size, resize_frames
from unite_search.image import patchify
from unite_search.settings import EncoderSettings
from unite_search.video import SampledFrames, preprocess_video, probe, read_frames

BACKENDS = ["av", "decord"]


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _backends():
    return [b if b == "av" else pytest.param(b, marks=pytest.mark.skipif(not _has_decord(), reason="no decord"))
            for b in BACKENDS]  # fmt: skip


def _frames(n, height, width, seed=0):
    """Noise over smooth ramps and a hard edge: every kind of content a resize kernel meets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, ((xx // 7 + yy // 5) % 2) * 255.0], -1)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        noisy = base + rng.normal(0, 40 * (i % 2), base.shape)
        out[i] = np.clip(np.rint(noisy), 0, 255)
    return out


# ------------------------------------------------------------------------------------ 1. kernel
@pytest.mark.parametrize(
    ("height", "width", "to_h", "to_w"),
    [(336, 596, 280, 504), (64, 176, 308, 840), (120, 90, 112, 84), (50, 500, 28, 308)],
)
def test_stage1_is_antialiased_bicubic(height, width, to_h, to_w):
    frames = _frames(2, height, width)
    ours = antialiased_bicubic(frames, to_h, to_w).astype(int)
    exact = restated.antialiased_bicubic(frames, to_h, to_w)
    expected = np.clip(np.rint(exact), 0, 255)
    # Float32 kernels round differently from this float64 restatement only next to a .5 tie
    clear = np.abs(exact - np.floor(exact) - 0.5) > 0.02
    assert clear.mean() > 0.9
    assert np.array_equal(ours[clear], expected[clear])
    assert np.abs(ours - expected).max() <= 1
    # The bar is one PIL's bicubic (the old stage 1: fixed-point, not antialiased the same way) fails
    pil = np.stack([np.asarray(Image.fromarray(f).resize((to_w, to_h), Image.Resampling.BICUBIC)) for f in frames])
    assert (pil.astype(int)[clear] != expected[clear]).sum() > 100


def _torchvision_resize():
    try:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as tf
    except Exception:  # noqa: BLE001  absent, or built for another torch
        return None
    return lambda x, size: tf.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)


@pytest.mark.skipif(_torchvision_resize() is None, reason="torchvision is not installed (CPU torch has none)")
def test_stage1_equals_torchvision_bit_for_bit():
    import torch

    resize = _torchvision_resize()
    for height, width, to_h, to_w in [(336, 596, 280, 504), (720, 1280, 280, 504), (64, 128, 224, 448)]:
        frames = _frames(3, height, width)
        theirs = resize(torch.from_numpy(frames).permute(0, 3, 1, 2), [to_h, to_w]).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(antialiased_bicubic(frames, to_h, to_w), theirs)


def test_file_frames_take_the_restated_sizes_and_kernel(tmp_path):
    path = write_index_video(tmp_path / "wide.mp4", 12, fps=4, height=336, width=596)
    settings = EncoderSettings()
    frames, info = read_frames(path, settings, backend="av")
    n = len(info.indices)
    h1, w1 = restated.video_frame_size(336, 596, n, max_pixels=360 * 420)
    h2, w2 = restated.smart_resize(h1, w1, 256 * 28 * 28, 1280 * 28 * 28)
    stage1 = np.clip(np.rint(restated.antialiased_bicubic(frames, h1, w1)), 0, 255).astype(np.uint8)
    ours = resize_frames(frames, settings)
    assert ours.shape == (n, h2, w2, 3) == (n, 336, 616, 3)
    # stage 2 (the processor's PIL bicubic) on our stage 1 is what resize_frames returns...
    ours_stage1 = antialiased_bicubic(frames, h1, w1)
    stage2 = np.stack([np.asarray(Image.fromarray(f).resize((w2, h2), Image.Resampling.BICUBIC)) for f in ours_stage1])
    assert np.array_equal(ours, stage2)
    # ...and our stage 1 is the restated one but at .5 ties
    assert (ours_stage1 != stage1).mean() < 0.01 and np.abs(ours_stage1.astype(int) - stage1).max() <= 1


# ------------------------------------------------------------------------------- 3. per-frame cap
@pytest.mark.parametrize("nframes", [4, 32, 254, 256, 300, 768])
@pytest.mark.parametrize(("height", "width"), [(336, 596), (1080, 1920), (240, 320), (96, 2000)])
def test_per_frame_cap_as_upstream(nframes, height, width):
    for cap in (360 * 420, 240 * 320, None):
        settings = EncoderSettings(video_max_pixels=cap)
        assert frame_size(height, width, nframes, settings) == restated.video_frame_size(height, width, nframes, cap)


def test_an_explicit_cap_holds_at_300_frames():
    settings = EncoderSettings(frames=300)
    assert frame_size(336, 596, 300, settings) == (280, 504)  # the total-pixel budget would give 252x476
    frames = SampledFrames(np.broadcast_to(_frames(1, 336, 596), (300, 336, 596, 3)))
    visual = preprocess_video(frames, settings)
    assert visual.grid_thw == (150, 336 // 14, 616 // 14)  # 280x504, then raised to >= 256 tokens
    # without an explicit cap, qwen-vl-utils' own shares its total budget out over the frames
    assert frame_size(336, 596, 300, EncoderSettings(video_max_pixels=None)) == (252, 476)


# ------------------------------------------------------------------------------ 2. frame lists
def test_frame_list_is_fetched_as_images_padded_and_never_cut():
    odd = list(_frames(5, 112, 140, seed=1))
    ours, info = frame_list(odd, EncoderSettings())
    assert info.indices == (0, 1, 2, 3, 4, 4)
    assert np.array_equal(ours, restated.frame_list(odd, max_pixels=360 * 420))
    # 112x140 is a multiple of 28 within the image bounds: stage 1 leaves it alone, where the video
    # minimum (128 tokens) would have raised it first and given other pixels
    raised = np.stack([np.asarray(Image.fromarray(f).resize((308, 252), Image.Resampling.BICUBIC)) for f in odd])
    h, w = ours.shape[1:3]
    via_video_min = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC)) for f in raised])
    assert not np.array_equal(ours[:5], via_video_min)
    many = list(_frames(40, 56, 84, seed=2))
    ours, info = frame_list(many, EncoderSettings())  # the 32-frame default applies to files only
    assert ours.shape[0] == 40 and np.array_equal(ours, restated.frame_list(many, max_pixels=360 * 420))


def test_frame_list_frames_of_other_sizes_follow_the_first():
    frames = [_frames(1, 400, 600)[0], _frames(1, 300, 500, seed=3)[0], _frames(1, 200, 200, seed=4)[0]]
    ours, _ = frame_list(frames, EncoderSettings())
    assert np.array_equal(ours, restated.frame_list(frames, max_pixels=360 * 420))
    visual = preprocess_video(frames, EncoderSettings())
    assert np.array_equal(visual.pixel_values, patchify(ours).pixel_values)
    assert visual.grid_thw == (2, ours.shape[1] // 14, ours.shape[2] // 14)


# ------------------------------------------------------------------------------------ 4. rotation
def _rotated(source, target, degrees):
    """``target``: ``source``'s packets, unchanged, with a display rotation (as ``ffmpeg
    -display_rotation:v:0 D -i source -c copy target`` writes it)."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream_from_template(stream_in)
        stream_out.set_display_rotation(degrees)
        for packet in src.demux(stream_in):
            if packet.dts is not None:
                packet.stream = stream_out
                dst.mux(packet)
    return target


@pytest.fixture(scope="module")
def upright(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("rot") / "upright.mp4", 30, fps=10)


@pytest.fixture(scope="module")
def upright_48(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("rot") / "upright48.mp4", 30, fps=10, height=48)


# decord 0.6 turns some mp4/mov itself, fails on others (by frame size: 128x48 here) and ignores mkv's
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize(
    ("degrees", "ext", "height"),
    [(90, "mov", 64), (270, "mp4", 64), (180, "mp4", 64), (90, "mkv", 64), (90, "mp4", 48)],
)
def test_rotated_video_reads_upright_with_either_backend(request, tmp_path, backend, degrees, ext, height):
    upright = request.getfixturevalue("upright_48" if height == 48 else "upright")
    path = _rotated(upright, tmp_path / f"r{degrees}.{ext}", degrees)
    settings = EncoderSettings(frames=6)
    stored, info = read_frames(upright, settings, backend="av")
    ours, got = read_frames(path, settings, backend=backend)
    turns = degrees // 90  # counter-clockwise, as players turn it (np.rot90 turns counter-clockwise)
    assert got.indices == info.indices
    assert np.array_equal(ours, np.stack([np.rot90(f, turns) for f in stored]))
    found = probe(path, backend)
    h, w = stored.shape[1:3]
    assert (found.rotation, (found.height, found.width)) == (degrees, (w, h) if degrees != 180 else (h, w))
    assert np.array_equal(read_frames(path, settings, backend, probe=found)[0], ours)
    assert [frame_index(np.rot90(f, -turns)) for f in ours] == list(info.indices)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg command is not installed")
def test_rotation_matches_ffmpeg_autorotate(upright, tmp_path):
    """The issue's own recipe: ffmpeg writes the rotation, and ffmpeg's decoder turns the frames."""
    path = tmp_path / "r.mov"
    cmd = ["ffmpeg", "-v", "error", "-y", "-display_rotation:v:0", "90", "-i", str(upright), "-c", "copy", str(path)]
    subprocess.run(cmd, check=True)
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    stored, _ = read_frames(upright, EncoderSettings(frames=30), backend="av")
    shown = np.frombuffer(raw, np.uint8).reshape(30, stored.shape[2], stored.shape[1], 3)
    for backend in ["av"] + (["decord"] if _has_decord() else []):
        ours, _ = read_frames(path, EncoderSettings(frames=30), backend=backend)
        assert np.array_equal(ours, shown)


@pytest.mark.parametrize("backend", _backends())
def test_ingest_reads_a_rotated_video_upright_opening_it_with_pyav_once(
    upright_48, tmp_path, encoder, monkeypatch, backend
):
    """The read stage's probe (rotation included) reaches the decode stage: no second PyAV check per read."""
    from unite_search import video
    from unite_search.ingestion import ingest
    from unite_search.store import IndexStore

    root = tmp_path / "corpus"
    root.mkdir()
    _rotated(upright_48, root / "phone.mp4", 90)
    write_index_video(root / "plain.mp4", 30, fps=10, height=48)
    monkeypatch.setattr(video, "_backend", lambda name: backend)
    checks = []
    real = video._checked_for_decord
    monkeypatch.setattr(video, "_checked_for_decord", lambda path, **kw: checks.append(path) or real(path, **kw))
    report = ingest(root, tmp_path / "index", encoder=encoder)
    assert report.status == "ok" and not report.failures
    assert len(checks) == (2 if backend == "decord" else 0)  # once per file, in the read stage's probe
    rows = {r["path"]: r for r in IndexStore(tmp_path / "index").read_rows("video").to_pylist()}
    assert (rows["phone.mp4"]["width"], rows["phone.mp4"]["height"]) == (48, 128)
    stored, _ = read_frames(upright_48, EncoderSettings(), backend="av")
    upright = SampledFrames(np.stack([np.rot90(f) for f in stored]))
    want = encoder.encode([{"video": upright}])[0]
    assert np.abs(np.asarray(rows["phone.mp4"]["vector"]) - want).max() <= 1e-5
