import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import BAR, BITS, frame_index, index_pixels, write_empty_video, write_index_video

from unite_search.errors import InputError
from unite_search.frames import frame_list, resize_frames
from unite_search.settings import EncoderSettings
from unite_search.units import segment_spans
from unite_search.video import Probe, frame_count, preprocess_video, probe, read_frames, sample_indices


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


needs_decord = pytest.mark.skipif(not _has_decord(), reason="decord is not installed")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 9.5 s at 10 fps: frame i shows i in binary
    return write_index_video(tmp_path_factory.mktemp("v") / "index.mp4", 95, fps=10)


@pytest.mark.parametrize(
    ("total", "fps", "settings", "expected"),
    [
        (95, 10, EncoderSettings(), 10),  # 9.5 s at 1 fps -> 9.5 -> round to even
        (300, 30, EncoderSettings(), 10),
        (20, 10, EncoderSettings(), 4),  # 2 s -> raised to min_frames
        (3000, 25, EncoderSettings(), 32),  # 120 s -> capped at max_frames
        (3000, 25, EncoderSettings(max_frames=31), 30),  # max rounded down to even
        (3000, 25, EncoderSettings(min_frames=3, fps=0.01), 4),  # min rounded up to even
        (95, 10, EncoderSettings(frames=16), 16),
        (95, 10, EncoderSettings(frames=7), 8),  # fixed counts are rounded to even
        (95, 10, EncoderSettings(fps=2.0), 20),
    ],
)
def test_frame_count(total, fps, settings, expected):
    assert frame_count(total, fps, settings) == expected


def test_linspace_rule():
    assert sample_indices(95, 10).tolist() == np.linspace(0, 94, 10).round().astype(int).tolist()
    assert sample_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]  # short clip: last frame repeats
    assert sample_indices(100, 4, "segment-middle").tolist() == [12, 37, 62, 87]
    # CaReBench's integer rule, not a rounded midpoint: 450 frames into 32 segments starts 6, 20, 34
    assert sample_indices(450, 32, "segment-middle")[:4].tolist() == [6, 20, 34, 48]
    assert sample_indices(20, 32, "segment-middle").tolist() == [*range(20), *[19] * 12]  # short: pad last


@pytest.mark.parametrize("backend", ["av", pytest.param("decord", marks=needs_decord)])
@pytest.mark.parametrize(
    ("settings", "count"),
    [(EncoderSettings(), 10), (EncoderSettings(frames=16), 16), (EncoderSettings(fps=3.0), 28)],
)
def test_right_frames_are_decoded(clip, backend, settings, count):
    frames, info = read_frames(clip, settings, backend=backend)
    expected = np.linspace(0, 94, count).round().astype(int).tolist()
    assert info.total_frames == 95 and info.fps == pytest.approx(10)
    assert list(info.indices) == expected
    assert [frame_index(f) for f in frames] == expected


@needs_decord
def test_decord_and_pyav_agree(clip):
    settings = EncoderSettings(frames=12)
    a, info_a = read_frames(clip, settings, backend="decord")
    b, info_b = read_frames(clip, settings, backend="av")
    assert info_a.indices == info_b.indices
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_short_clip_repeats_last_frame(tmp_path):
    path = write_index_video(tmp_path / "short.mp4", 3, fps=10)
    frames, _ = read_frames(path, EncoderSettings(frames=6), backend="av")
    assert [frame_index(f) for f in frames] == [0, 1, 2, 2, 2, 2]


def test_frame_sequence_input_keeps_every_frame_and_pads_odd_counts():
    seq = [np.full((60, 80, 3), i * 10, np.uint8) for i in range(7)]
    frames, info = frame_list(seq, EncoderSettings())
    assert info.indices == (0, 1, 2, 3, 4, 5, 6, 6)  # 7 frames: padded to 8 by repeating the last
    assert [int(f[0, 0, 0]) for f in frames] == [0, 10, 20, 30, 40, 50, 60, 60]
    many, info = frame_list(seq * 10, EncoderSettings(max_frames=8, frames=4))  # a given list is never cut
    assert many.shape[0] == 70 and info.total_frames == 70
    with pytest.raises(InputError, match="sequence of frames"):
        frame_list("clip.mp4", EncoderSettings())
    with pytest.raises(InputError, match="takes a video file"):
        read_frames(seq, EncoderSettings())


def test_video_frames_get_both_resizes():
    # 360x420 stays under the 151,200 px per-frame cap, then is raised to >= 200,704 px
    frames = np.zeros((4, 360, 420, 3), np.uint8)
    out = resize_frames(frames, EncoderSettings())
    assert out.shape[1] % 28 == 0 and out.shape[2] % 28 == 0
    assert out.shape[1] * out.shape[2] >= 256 * 28 * 28
    visual = preprocess_video(list(frames), EncoderSettings())
    t, h, w = visual.grid_thw
    assert t == 2 and visual.tokens == 2 * (h // 2) * (w // 2)


def test_bad_videos(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_frames(tmp_path / "nope.mp4", EncoderSettings())
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_frames(tmp_path / "empty.mp4", EncoderSettings())
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    for backend in ["av"] + (["decord"] if _has_decord() else []):
        with pytest.raises(InputError, match=r"junk\.mp4"):
            read_frames(tmp_path / "junk.mp4", EncoderSettings(), backend=backend)
    with pytest.raises(InputError, match="no frames"):
        frame_list([], EncoderSettings())


def test_zero_frame_video(tmp_path):
    path = write_empty_video(tmp_path / "zero.mp4")
    for backend in ["av"] + (["decord"] if _has_decord() else []):
        with pytest.raises(InputError, match=r"zero\.mp4: (file has no video stream|cannot decode)"):
            read_frames(path, EncoderSettings(), backend=backend)


@pytest.mark.parametrize("backend", [pytest.param("decord", marks=needs_decord), "av"])
def test_bad_video_files_are_told_in_words(tmp_path, backend, capfd):
    """The reason says what is wrong, the same words every time (no time, path or source line); the
    decoder's own message is the error's ``detail``. PyAV opens every file before decord does, so decord
    never prints its complaints from C."""
    from corpora import write_audio_only, write_damaged_mp4, write_truncated_mp4

    import unite_search.video as video

    cases = {
        write_audio_only(tmp_path / "audio_only.mp4"): (video.AUDIO_ONLY, False),
        write_truncated_mp4(tmp_path / "cut.mp4"): (video.TRUNCATED, True),
        write_damaged_mp4(tmp_path / "damaged.mp4"): (video.UNREADABLE, True),
    }
    assert video.AUDIO_ONLY == "file has no video stream (audio only)"
    assert video.TRUNCATED.startswith("truncated file") and video.UNREADABLE.startswith("damaged or not a video")
    capfd.readouterr()
    for path, (reason, has_detail) in cases.items():
        for read in (lambda p=path: probe(p, backend), lambda p=path: read_frames(p, EncoderSettings(), backend)):
            with pytest.raises(InputError) as info:
                read()
            assert (info.value.reason, str(info.value)) == (reason, f"{path}: {reason}")
            assert bool(info.value.detail) == has_detail, info.value.detail
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_ffmpeg_messages_are_collected_for_the_run_log_and_not_printed(tmp_path, capfd):
    import logging

    from corpora import write_truncated_mp4

    from unite_search import decoderlog

    path = write_truncated_mp4(tmp_path / "cut.mp4")
    capfd.readouterr()
    with decoderlog.collecting():
        with pytest.raises(InputError) as info:
            probe(path, "av")
        assert av.logging.get_level() == av.logging.ERROR
    assert "moov atom not found" in info.value.detail  # FFmpeg's own words, captured on the decoding thread
    assert "moov" not in info.value.reason
    # the process is left as it was: PyAV quiet, no handler of ours on its logger
    assert av.logging.get_level() is None
    assert decoderlog._handler not in logging.getLogger("libav").handlers
    out, err = capfd.readouterr()
    assert "moov" not in out + err


def test_a_message_the_exception_already_quotes_is_not_repeated_in_the_detail():
    """PyAV may end its exception with FFmpeg's last message, which the capture also holds."""
    from unite_search.video import _failure

    exc = OSError("Invalid data; last error log: [mov] moov atom not found")
    logs = [(16, "mov", "moov atom not found"), (16, "h264", "no frame!")]
    detail = _failure("x.mp4", exc, logs, opened=False).detail
    assert detail == "OSError: Invalid data; last error log: [mov] moov atom not found; [h264] no frame!"


@pytest.mark.parametrize("backend", [pytest.param("decord", marks=needs_decord), "av"])
@pytest.mark.parametrize(("start", "end"), [(0.0, 3.0), (2.5, 5.5), (9.0, 12.0)])
def test_time_range_reads_the_frames_of_that_range(tmp_path_factory, backend, start, end):
    """Segments sample within their own range (PyAV seeks, then numbers frames by timestamp)."""
    clip = tmp_path_factory.getbasetemp() / "range120.mp4"
    if not clip.exists():
        write_index_video(clip, 120, fps=10)
    frames, info = read_frames(clip, EncoderSettings(fps=2), backend, start, end)
    first, stop = round(start * 10), round(end * 10)
    want = first + sample_indices(stop - first, 6)  # 3 s at 2 fps
    assert list(info.indices) == want.tolist()
    assert [frame_index(f) for f in frames] == want.tolist()


def test_probe_reads_header_facts(clip):
    for backend in ["av"] + (["decord"] if _has_decord() else []):
        found = probe(clip, backend)
        assert (found.total_frames, found.fps, found.width, found.height) == (95, 10.0, 128, 64)
        assert found.duration == pytest.approx(9.5)


@pytest.mark.parametrize(
    ("duration", "seconds", "overlap", "spans"),
    [
        (20.0, 30.0, 5.0, [(0.0, 20.0)]),
        (30.0, 30.0, 5.0, [(0.0, 30.0)]),
        (70.0, 30.0, 5.0, [(0.0, 30.0), (25.0, 55.0), (50.0, 70.0)]),
        (10.0, 4.0, 0.0, [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]),
    ],
)
def test_segment_spans(duration, seconds, overlap, spans):
    assert segment_spans(duration, seconds, overlap) == spans


def test_segment_spans_never_end_with_a_span_inside_the_one_before():
    """The default overlap is a sixth: the start's sum of strides fell an ulp short of where the last span
    ended, and a span lying wholly inside the one before was added (an extra row of content already covered)."""
    for duration in (2000 / 30, 6100 / 30, 4880 / 24):
        spans = segment_spans(duration, 20, 20 / 6)
        assert spans[-1][1] == round(duration, 3) and spans[-2][1] < spans[-1][1], spans[-2:]


def test_segment_spans_rejects_overlap_not_below_length():
    with pytest.raises(ValueError, match="overlap"):
        segment_spans(100, 10, 10)


GOP = 4  # write_index_video puts a keyframe every 4 frames


def write_paused_clip(path: Path, n_frames: int, fps: int, pause: int) -> Path:
    """An index-coded mkv (H.264) or webm (VP8) whose timestamps jump ``pause`` frames halfway, as a
    recording paused and resumed: its duration then promises more frames than it holds."""
    codec = {".mkv": "libx264", ".webm": "libvpx"}[path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = BITS * BAR, 64, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(index_pixels(i), format="rgb24")
            frame.pts = i + (pause if i >= n_frames // 2 else 0)  # in 1/fps units
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decodable_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def long_mkv(tmp_path_factory):
    # 20 s at 10 fps; mkv stores no frame count, so PyAV must decode to count
    path = write_index_video(tmp_path_factory.mktemp("mkv") / "long.mkv", 200, fps=10)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    return path


def test_segment_reads_with_the_probe_decode_only_their_span(long_mkv):
    """Ingest reads a long clip as overlapping segments: with the read-stage probe each read decodes
    its own span (from the keyframe before it), not the whole file to count frames first."""
    found = probe(long_mkv, "av")
    settings = EncoderSettings(fps=2)
    spans = segment_spans(found.duration, 4.0, 1.0)
    assert len(spans) == 7
    with_probe, without = [], []
    for start, end in spans:
        frames, info = read_frames(long_mkv, settings, "av", start, end, probe=found)
        ref_frames, ref = read_frames(long_mkv, settings, "av", start, end)
        assert info.indices == ref.indices
        assert [frame_index(f) for f in frames] == list(info.indices)
        np.testing.assert_array_equal(frames, ref_frames)
        assert info.indices[-1] - info.indices[0] + 1 <= info.decoded <= round((end - start) * 10) + GOP
        assert ref.decoded >= 200
        with_probe.append(info.decoded)
        without.append(ref.decoded)
    # Linear: every frame about once, plus the overlaps and a GOP per segment; without: once per segment.
    assert sum(with_probe) <= 200 + len(spans) * (10 + GOP)
    assert sum(without) >= 200 * len(spans)


@needs_decord
def test_decord_opens_a_clip_once_for_all_the_segments_a_thread_reads(long_mkv, tmp_path, monkeypatch):
    """decord reads a whole file to index it when it opens it: opened again for every segment, a 27 MB clip
    in 7 segments was read 7 times more. A thread keeps its reader for ingest's segments (a range read with
    the read stage's probe), never shares it, and keeps none for other reads (a query's upload, whose file
    is deleted after)."""
    import threading

    import decord

    from unite_search import video

    long_mkv = Path(shutil.copy(long_mkv, tmp_path / "long.mkv"))
    opened = []
    real = decord.VideoReader
    monkeypatch.setattr(decord, "VideoReader", lambda path, **kw: opened.append(path) or real(path, **kw))
    found = probe(long_mkv, "decord")
    assert len(opened) == 1 and video._READERS == {}
    spans = segment_spans(found.duration, 4.0, 1.0)
    settings = EncoderSettings(fps=2)
    kept = [read_frames(long_mkv, settings, "decord", start, end, probe=found)[0] for start, end in spans]
    assert len(opened) == 2 and len(video._READERS) == 1
    other = threading.Thread(target=read_frames, args=(long_mkv, settings, "decord", 4.0, 8.0, found))
    other.start()
    other.join()
    assert len(opened) == 3
    video.release_readers()
    assert video._READERS == {}
    for (start, end), frames in zip(spans, kept, strict=True):  # a fresh reader for each segment reads the same frames
        video.release_readers()
        np.testing.assert_array_equal(read_frames(long_mkv, settings, "decord", start, end, probe=found)[0], frames)
    assert len(opened) == 3 + len(spans)
    os.utime(long_mkv)  # a file that changed is opened again
    read_frames(long_mkv, settings, "decord", 0.0, 4.0, probe=found)
    read_frames(long_mkv, settings, "decord", 0.0, 4.0, probe=found)
    assert len(opened) == 4 + len(spans)
    video.release_readers()
    read_frames(long_mkv, settings, "decord", 0.0, 4.0)  # no probe: not ingest's segments
    read_frames(long_mkv, settings, "decord", probe=found)  # the whole clip
    assert video._READERS == {}


def write_vfr_index_video(path: Path, n_frames: int) -> Path:
    """Frame i shows i in binary, 30 frames a second for 40 frames, then 15 for 40, and so on (as phones record)."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = BITS * BAR, 64, "yuv420p"
        stream.options = {"crf": "12", "g": "15", "bf": "0"}
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(index_pixels(i), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += 33 if (i // 40) % 2 == 0 else 67
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("backend", ["av", pytest.param("decord", marks=needs_decord)])
def test_segments_of_a_variable_frame_rate_clip_read_the_frames_they_sample(tmp_path, backend):
    """PyAV numbered the frames after a seek by timestamp x fps: where the rate varied it read others
    (up to 0.25 off in the vector), some twice. Frames are numbered by their timestamps' order now."""
    path = write_vfr_index_video(tmp_path / "vfr.mp4", 200)
    found = probe(path, backend)
    spans = segment_spans(found.duration, 3.0, 0.5)
    assert len(spans) == 4
    for start, end in spans:
        frames, info = read_frames(path, EncoderSettings(), backend, start, end, probe=found)
        assert [frame_index(f) for f in frames] == list(info.indices)


def _write_coded(path: Path, n: int, codec: str, options: dict, first_pts: int = 0, shown_from: int = 0) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = BITS * BAR, 64, "yuv420p"
        stream.options = options
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(index_pixels(shown_from + i), format="rgb24")
            frame.pts = first_pts + i  # below 0: the muxer writes an edit list cutting those frames
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    "codec, options, first_pts, suffix",
    [
        ("libx264", {"crf": "12", "g": "12", "bf": "0"}, -5, ".mp4"),  # a `-c copy` trim: 5 packets cut by an edit list
        ("libx265", {"x265-params": "keyint=12:min-keyint=12:bframes=3:log-level=error"}, 0, ".mp4"),  # open GOPs
        ("libx264", {"crf": "12", "g": "12", "bf": "3"}, 37, ".mp4"),  # B-frames, a start offset
        ("libx264", {"crf": "12", "g": "12", "bf": "3"}, 0, ".avi"),  # AVI keeps no presentation times
    ],
)
def test_segments_read_the_frames_a_whole_read_numbers_so(tmp_path, codec, options, first_pts, suffix):
    """Numbered by the packets' timestamps, a trimmed clip's segments were shifted by the cut packets; a
    seek to a frame's own timestamp landed after it where a GOP is open (HEVC's default); and an AVI's
    frames, which carry decode times, were numbered out of order wherever B-frames are."""
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV has no {codec}")
    path = _write_coded(tmp_path / f"clip{suffix}", 80, codec, options, first_pts)
    with av.open(str(path)) as container:
        shown = [frame_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    found = probe(path, "av")
    for start in np.arange(0.1, (len(shown) - 25) / 10, 0.3):
        frames, info = read_frames(path, EncoderSettings(frames=8), "av", start, start + 2.0, probe=found)
        assert [frame_index(f) for f in frames] == [shown[i] for i in info.indices], start


def _open_handles(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == os.path.realpath(path)) if fds.is_dir() else 0


def test_an_avi_read_segment_by_segment_decodes_each_frame_once(tmp_path):
    """An AVI has no times to seek by, so each segment was decoded from frame 0: the 10 segments of a 4-minute
    clip decoded 5.9 times its frames. A thread's decoder now goes on from its last segment, keeping the frames
    of the next one that it passed (they overlap): the same frames, each decoded once, and no file left open."""
    path = _write_coded(tmp_path / "clip.avi", 200, "libx264", {"crf": "12", "g": "24", "bf": "3"})
    found = probe(path, "av")
    spans = segment_spans(found.duration, 4.0, 1.5)  # 8 segments of a 20 s clip
    settings = EncoderSettings(fps=4.0)  # 16 frames a segment, 6 of them in the next one's range
    decoded = []
    for j, (start, end) in enumerate(spans):
        then = spans[j + 1] if j + 1 < len(spans) else None
        frames, info = read_frames(path, settings, "av", start, end, probe=found, then=then)
        assert [frame_index(f) for f in frames] == list(info.indices) and len(info.indices) >= 10, start
        decoded.append(info.decoded)
        assert _open_handles(path) == (then is not None)
    assert len(spans) == 8 and sum(decoded) == 200
    # read alone (no next range), each segment decodes from frame 0, as before
    assert read_frames(path, settings, "av", *spans[-1], probe=found)[1].decoded == 200


def test_an_avi_pass_starts_over_where_it_cannot_go_on(tmp_path):
    """A range behind the kept decoder, a segment read out of order or a file replaced between two segments is
    read by a new pass: the right frames every time."""
    path = _write_coded(tmp_path / "clip.avi", 120, "mpeg4", {"g": "12", "bf": "2"})
    found = probe(path, "av")
    settings = EncoderSettings(frames=8)

    def shown(start, end, then=None):
        frames, info = read_frames(path, settings, "av", start, end, probe=found, then=then)
        return [frame_index(f) for f in frames], list(info.indices), info.decoded

    first = shown(4.0, 8.0, then=(6.0, 10.0))
    assert first[0] == first[1] and first[2] == first[1][-1] + 1
    behind = shown(1.0, 5.0, then=(9.0, 12.0))  # before what the pass kept: from frame 0 again
    assert behind[0] == behind[1] and behind[2] == behind[1][-1] + 1
    ahead = shown(9.0, 12.0, then=(10.0, 12.0))
    assert ahead[0] == ahead[1] and ahead[2] == ahead[1][-1] - behind[1][-1]
    # the same path, other frames (shown from 100): the pass kept for the old file is not used
    new = _write_coded(tmp_path / "new.avi", 120, "mpeg4", {"g": "12", "bf": "2"}, shown_from=100)
    os.replace(new, path)
    again = shown(10.0, 12.0)
    assert again[0] == [100 + i for i in again[1]] and again[2] == again[1][-1] + 1
    assert _open_handles(path) == 0


def test_release_readers_closes_the_kept_avi_passes(tmp_path):
    from unite_search.video import release_readers

    path = _write_coded(tmp_path / "clip.avi", 60, "mpeg4", {"g": "12"})
    found = probe(path, "av")
    read_frames(path, EncoderSettings(frames=4), "av", 0.0, 3.0, probe=found, then=(2.0, 5.0))
    assert _open_handles(path) == 1
    release_readers()
    assert _open_handles(path) == 0


@pytest.mark.parametrize("backend", ["av", pytest.param("decord", marks=needs_decord)])
def test_reader_samples_from_the_given_probe(long_mkv, backend):
    settings = EncoderSettings(fps=0.4)
    short = Probe(total_frames=100, fps=10.0, width=0, height=0)  # as if the clip ended at 10 s
    frames, info = read_frames(long_mkv, settings, backend, probe=short)
    assert info.indices == (0, 33, 66, 99) and info.total_frames == 100
    assert [frame_index(f) for f in frames] == [0, 33, 66, 99]
    assert preprocess_video(long_mkv, settings, backend, probe=short).grid_thw[0] == 2
    assert preprocess_video(long_mkv, settings, backend).grid_thw[0] == 4  # 20 s: 8 frames


@needs_decord
def test_an_avi_is_read_in_the_order_shown_whatever_the_backend(tmp_path):
    """decord returns an AVI's frames in decode order: with B-frames, 8 frames sampled from 60 came back as
    [0, 0, 1, 1, 2, 2, 3, 3]. An AVI is read with PyAV, whichever backend is asked for."""
    path = _write_coded(tmp_path / "clip.avi", 60, "libx264", {"crf": "12", "g": "12", "bf": "3"}, 0)
    for backend in ("decord", "av"):
        frames, info = read_frames(path, EncoderSettings(frames=8), backend, probe=probe(path, backend))
        assert [frame_index(f) for f in frames] == list(info.indices) == [0, 8, 17, 25, 34, 42, 51, 59], backend


@pytest.mark.parametrize("backend", ["av", pytest.param("decord", marks=needs_decord)])
def test_a_clip_trimmed_by_an_edit_list_is_counted_and_read_as_shown(tmp_path, backend):
    """A `-c copy` trim keeps the cut packets in the header's count (130 for 80 shown): with PyAV the late
    segments read no frame and the whole file failed as damaged; decord read the frames out of order."""
    path = _write_coded(tmp_path / "trim.mp4", 130, "libx264", {"crf": "12", "g": "60", "bf": "0"}, -50)
    found = probe(path, backend)
    assert found.total_frames == 80
    frames, info = read_frames(path, EncoderSettings(frames=8), backend, probe=found)
    assert [frame_index(f) for f in frames] == [50 + i for i in info.indices] == [50, 61, 73, 84, 95, 106, 118, 129]
    frames, info = read_frames(path, EncoderSettings(frames=8), backend, 6.0, 8.0, probe=found)
    assert [frame_index(f) for f in frames] == [50 + i for i in info.indices]


@pytest.mark.parametrize("backend", ["av", pytest.param("decord", marks=needs_decord)])
def test_a_probe_that_over_counts_takes_the_last_frame_of_the_file_on_both_backends(long_mkv, backend):
    """Past the file's end, an index takes its last frame (decord's behaviour): PyAV took the last frame it
    had sampled before, an earlier one."""
    over = Probe(total_frames=215, fps=10.0, width=0, height=0)  # the file holds 200
    frames, info = read_frames(long_mkv, EncoderSettings(frames=8), backend, probe=over)
    assert info.indices[-2:] == (183, 214) and [frame_index(f) for f in frames][-2:] == [183, 199]


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
@pytest.mark.parametrize("pause", [0, 20])
def test_probe_counts_what_the_reader_reads(tmp_path, suffix, pause):
    """The read-stage probe and a reader without one see the same count, so ingest and encode
    sample the same frames (a duration-based estimate would say 80 for the paused clip)."""
    path = write_paused_clip(tmp_path / f"clip{suffix}", 60, fps=10, pause=pause)
    found = probe(path, "av")
    assert found.total_frames == decodable_frames(path) == 60
    settings = EncoderSettings(frames=16)
    frames, info = read_frames(path, settings, "av")
    with_probe, info_probe = read_frames(path, settings, "av", probe=found)
    assert info.indices == info_probe.indices == tuple(sample_indices(60, 16).tolist())
    assert [frame_index(f) for f in frames] == list(info.indices)
    np.testing.assert_array_equal(frames, with_probe)


@needs_decord
@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
@pytest.mark.parametrize("pause", [0, 20])
def test_decord_and_pyav_probes_count_alike(tmp_path, suffix, pause):
    path = write_paused_clip(tmp_path / f"clip{suffix}", 60, fps=10, pause=pause)
    assert probe(path, "decord").total_frames == probe(path, "av").total_frames == 60
