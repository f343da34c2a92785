"""Clips whose frame rate varies (phones, screen recorders): a time range holds the frames the clip shows in
those seconds, and the clip's length is the one its timestamps give, whatever its average or nominal rate
says. Clips that keep their rate read the frames they read before."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import BAR, BITS, frame_index, index_pixels, write_index_video
from corpora import write_photo
from test_ingest import assert_same_rows, rows_by_id
from test_video import needs_decord

from unite_search.ingestion import ingest
from unite_search.settings import EncoderSettings
from unite_search.units import segment_spans
from unite_search.video import probe, read_frames

BACKENDS = ["av", pytest.param("decord", marks=needs_decord)]
# 30 frames a second for 4 s, then 5 a second for 8 s: 160 frames, 12 s; an average of 13.3 frames a second,
# and a nominal 30 in mkv
TIMES_MS = [round(i * 1000 / 30) for i in range(120)] + [4000 + 200 * i for i in range(40)]


def write_timed_video(path: Path, times_ms: list[int]) -> Path:
    """Frame i shows i in binary and is shown from ``times_ms[i]``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = BITS * BAR, 64, "yuv420p"
        stream.options = {"crf": "12", "g": "15", "bf": "0"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(index_pixels(i), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_segment_holds_the_frames_shown_in_its_seconds(tmp_path, backend, suffix):
    """Seconds became frames through the average rate: the row of [3, 5.5) s embedded frames shown at
    1.3-2.3 s; and an mkv, whose rate is nominal, was 5.3 s long for 12 s of frames, so its last 6.7 s had
    no segment."""
    path = write_timed_video(tmp_path / f"vfr{suffix}", TIMES_MS)
    found = probe(path, backend)
    assert found.total_frames == 160 and found.duration == pytest.approx(12.0)
    spans = segment_spans(found.duration, 3.0, 0.5)
    assert spans[-1] == (10.0, 12.0) and len(spans) == 5
    seconds = np.asarray(TIMES_MS) / 1000
    for start, end in spans:
        frames, info = read_frames(path, EncoderSettings(fps=2), backend, start, end, probe=found)
        read = [frame_index(f) for f in frames]
        assert read == list(info.indices)
        assert len(read) == round((end - start) * 2)  # sampled by the range's seconds, as a constant-rate clip
        first, last = read[0], read[-1]
        assert seconds[first] <= start < seconds[first + 1]  # the frame on screen when the range opens
        assert seconds[last] < end and (last == 159 or seconds[last + 1] >= end)  # the last one before it ends
        assert np.all(np.diff(read) >= 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clips_that_keep_their_rate_are_read_by_it(tmp_path, backend):
    """A constant-rate clip, also one with B-frames and a start offset, keeps the rate's arithmetic: its
    frames are the ones earlier versions read (the rows of an index built before stay right)."""
    cfr = write_index_video(tmp_path / "cfr.mp4", 95, fps=10)
    offset = tmp_path / "offset.mp4"
    with av.open(str(offset), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = BITS * BAR, 64, "yuv420p"
        stream.options = {"crf": "12", "g": "12", "bf": "3"}
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(index_pixels(i), format="rgb24")
            frame.pts = 37 + i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for path, n in ((cfr, 95), (offset, 60)):
        found = probe(path, backend)
        assert found.seconds is None and found.duration == pytest.approx(n / 10)
        frames, info = read_frames(path, EncoderSettings(fps=2), backend, 2.04, 4.96, probe=found)
        assert info.indices[0] == 20 and info.indices[-1] == 49  # round(2.04 x 10), round(4.96 x 10) - 1
        assert [frame_index(f) for f in frames] == list(info.indices)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_screen_recording_of_a_few_frames_is_as_long_as_its_timestamps(tmp_path, backend):
    """A screen recorder sends a frame when the screen changes: 5 frames in a minute. decord has no times for
    an mkv this short (FFmpeg's "no timestamp" for each frame), so the clip looked 0 s long with decord and
    every segment failed; the times come from the packets for both backends."""
    path = write_timed_video(tmp_path / "screen.mkv", [0, 12000, 24000, 36000, 48000])
    found = probe(path, backend)
    assert found.duration == 60.0 and probe(path, "av") == found
    read = [read_frames(path, EncoderSettings(fps=0.2), backend, start, end, probe=found)[1].indices
            for start, end in segment_spans(found.duration, 30.0, 5.0)]  # fmt: skip
    assert [(i[0], i[-1]) for i in read] == [(0, 2), (2, 4), (4, 4)]  # on screen at 0, 25 and 50 s


@pytest.mark.parametrize("backend", BACKENDS)
def test_timestamps_far_from_zero_pick_the_same_frames_on_both_backends(tmp_path, backend):
    """A capture whose clock starts at 80,000 s: decord's float32 times moved frames across a segment's edge
    (frames 74-126 where PyAV read 75-127)."""
    path = write_timed_video(tmp_path / "late.mkv", [80_000_123 + t for t in TIMES_MS])
    found = probe(path, backend)
    for start, end in segment_spans(found.duration, 3.0, 0.5):
        ours = read_frames(path, EncoderSettings(fps=2), backend, start, end, probe=found)[1].indices
        assert ours == read_frames(path, EncoderSettings(fps=2), "av", start, end)[1].indices


def test_an_index_built_before_rereads_only_its_videos_and_replaces_a_variable_rate_clips_rows(
    tmp_path, encoder, monkeypatch
):
    """An index whose file cache predates the frame-rate check: its videos (only) are read again, and the
    rows of a variable-rate clip, read through the average rate, are encoded again by the timestamps."""
    import pyarrow.compute as pc

    from unite_search import frametimes, rerun, units
    from unite_search.store import IndexStore

    root, index = tmp_path / "corpus", tmp_path / "index"
    root.mkdir()
    write_timed_video(root / "walk.mkv", TIMES_MS)
    write_index_video(root / "steady.mp4", 40, fps=10)
    write_photo(root / "photo.png", 1)
    (root / "note.txt").write_text("a note about nothing in particular")
    (root / "walk.txt").write_text("a walk in the park")  # its caption: a composed pair's row of the whole clip
    (root / "items.jsonl").write_text('{"id": "walk-item", "video": "walk.mkv", "text": "the same walk"}\n')
    opts = {"segment_seconds": 3.0, "segment_overlap": 0.5, "pairs": "composed"}
    with monkeypatch.context() as m:  # what earlier versions did: no clip was told by its timestamps
        m.setattr(frametimes, "variable_length", lambda shown, fps: None)
        m.setattr(rerun, "READS", 1)
        ingest(root, index, encoder=encoder, **opts)
    before = rows_by_id(index)
    assert {round(r["end"], 3) for r in before.values() if r["path"] == "walk.mkv" and r["start"] > 0} == {5.333}
    assert {round(r["duration"], 3) for r in before.values() if r["path"] == "walk.mkv"} == {5.333}
    tables = IndexStore(index).tables
    old = tables.db.open_table("files").to_arrow()  # the file cache's layout before 'vfr'
    old = old.drop_columns(["vfr", "reads"])
    tables.db.create_table("files", data=old, mode="overwrite")
    assert pc.sum(pc.equal(old["modality"], "video")).as_py() == 2

    read = []
    real = units.read_file
    monkeypatch.setattr(units, "read_file", lambda entry, **kw: read.append(entry.rel) or real(entry, **kw))
    report = ingest(root, index, encoder=encoder, **opts)
    # the photo is not read again (the texts are, for edition 3's passages: cut as before, their rows stay)
    assert sorted(read) == ["note.txt", "steady.mp4", "walk.mkv", "walk.txt"]
    # the clip's segments, its composed pair and its manifest item (rows of the whole clip, 5.3 s long before)
    assert report.encoded_items == 3 and report.removed_items == 3 and report.unchanged_items == 3
    after = rows_by_id(index)
    walk = sorted((r["start"], r["end"]) for r in after.values() if r["path"] == "walk.mkv" and r["source"] == "file")
    assert walk == segment_spans(12.0, 3.0, 0.5)
    assert {r["duration"] for r in after.values() if r["path"] == "walk.mkv"} == {12.0}
    fresh = tmp_path / "fresh"
    ingest(root, fresh, encoder=encoder, **opts)
    assert_same_rows(after, rows_by_id(fresh))
    read.clear()
    assert ingest(root, index, encoder=encoder, **opts).encoded_items == 0 and read == []
    from unite_search import video

    assert video._READERS == {}  # the run let go of the readers it kept for a clip's next segment


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_count_below_the_packets_reads_the_last_frame_counted(tmp_path, backend):
    """A damaged mkv decodes fewer frames than it has packets (its count comes from decoding): a late segment
    began past the count and failed as a clip with no frames."""
    from dataclasses import replace

    path = write_timed_video(tmp_path / "vfr.mkv", TIMES_MS)
    short = replace(probe(path, backend), total_frames=100)
    frames, info = read_frames(path, EncoderSettings(fps=2), backend, 10.0, 12.0, probe=short)
    assert set(info.indices) == {99} and {frame_index(f) for f in frames} == {99}
