"""Ingest end to end with the tiny model: every kind, bad input, crash and resume, updates, safety."""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from corpora import make_bad_corpus, make_good_corpus, write_clip, write_photo

from unite_search.errors import InputError
from unite_search.ingestion import IngestError, ingest
from unite_search.reader import Snapshot
from unite_search.store import IndexLockedError, IndexMismatchError, IndexStore

OPTS = {"segment_seconds": 4.0, "segment_overlap": 1.0, "passage_chars": 200}


def rows_by_id(index: Path) -> dict[str, dict]:
    """Every published row of every shard: id -> row (vector as an array)."""
    store = IndexStore(index)
    out: dict[str, dict] = {}
    for shard in store.require_manifest()["shards"]:
        for row in store.read_rows(shard).to_pylist():
            key = f"{shard}:{row['id']}"
            assert key not in out, f"duplicate row {key}"
            row["vector"] = np.asarray(row["vector"], dtype=np.float32)
            out[key] = row
    return out


def assert_same_rows(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key]["vector"], b[key]["vector"], atol=1e-5, err_msg=key)
        assert a[key]["paths"] == b[key]["paths"], key


@pytest.fixture(scope="module")
def good(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("good") / "corpus"
    root.mkdir()
    make_good_corpus(root)
    index = root.parent / "index"
    report = ingest(root, index, encoder=encoder, pairs="composed", **OPTS)
    return root, index, report


def test_every_kind_is_indexed(good):
    _, index, report = good
    assert report.status == "ok", report.summary()
    assert report.failures == []
    rows = rows_by_id(index)
    by_path: dict[str, list[dict]] = {}
    for row in rows.values():
        for p in row["paths"]:
            by_path.setdefault(p, []).append(row)
    for rel in ["photos/a.jpg", "photos/b.png", "photos/nested/deep/c.webp", "d.bmp", "e.gif", "f.tiff", "g.jpeg"]:
        assert any(r["modality"] == "image" for r in by_path[rel]), rel
    assert any(r["modality"] == "image" for r in by_path["photos/really_png.jpg"])
    for ext in (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"):
        assert any(r["modality"] == "video" for r in by_path[f"clips/clip{ext}"]), ext
    # hidden folder skipped and reported; README.rst ignored
    assert [p.path for p in report.skipped] == [".hidden"]
    assert report.ignored_files == 1
    assert not any(".hidden" in p for p in by_path)
    # sidecar captions are stored, not indexed as text items
    assert "photos/a.txt" not in by_path and "clips/clip.txt" not in by_path
    a_image = next(r for r in by_path["photos/a.jpg"] if r["modality"] == "image")
    assert a_image["caption"] == "a gradient photo of stripes"


def test_duplicate_bytes_are_one_row_with_both_paths(good):
    _, index, _ = good
    rows = rows_by_id(index)
    dup = [r for r in rows.values() if r["modality"] == "image" and "dups/a_copy.jpg" in r["paths"]]
    assert len(dup) == 1
    assert dup[0]["paths"] == ["dups/a_copy.jpg", "photos/a.jpg"]
    assert dup[0]["path"] == "dups/a_copy.jpg"


def test_long_video_is_segmented_with_time_ranges(good):
    _, index, _ = good
    segs = sorted(
        (r for r in rows_by_id(index).values() if r["modality"] == "video" and r["path"] == "clips/long/long.mp4"),
        key=lambda r: r["start"],
    )
    assert [(r["start"], r["end"]) for r in segs] == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]
    assert all(r["duration"] == pytest.approx(10.0) for r in segs)
    assert all(r["frames"] == 4 for r in segs)  # 4 s at 1 fps
    assert len({r["id"] for r in segs}) == 3 and all("@" in r["id"] for r in segs)
    # segments see different frames, so their vectors differ
    assert float(segs[0]["vector"] @ segs[2]["vector"]) < 0.99999


def test_text_files_become_passages_with_offsets(good):
    root, index, _ = good
    text = (root / "notes/long.md").read_text()
    rows = sorted(
        (r for r in rows_by_id(index).values() if r["path"] == "notes/long.md"), key=lambda r: r["char_start"]
    )
    assert len(rows) > 3
    assert rows[0]["char_start"] == 0 and rows[-1]["char_end"] == len(text.rstrip())
    for r in rows:
        assert r["text"] == text[r["char_start"] : r["char_end"]] == r["text"].strip()
        assert len(r["text"]) <= 200


def test_text_ends_do_not_change_a_vector(tmp_path, encoder):
    """A file holding "a red kite\n" is found at rank 1 by the query "a red kite", with its very vector."""
    from unite_search import Index

    root = tmp_path / "corpus"
    root.mkdir()
    (root / "kite.txt").write_text("a red kite\n")
    (root / "spaced.txt").write_text("\n\n   a blue boat on a lake \t\n")
    for i, line in enumerate(["a red kite flies", "a red bike", "kites of red", "the red kite"]):
        (root / f"near{i}.txt").write_text(line)
    ingest(root, tmp_path / "index", encoder=encoder)
    idx = Index.open(tmp_path / "index", encoder=encoder)
    for query in ("a red kite", " a red kite\n", "a red kite\t"):
        top = idx.query(text=query, target="text", k=3)[0]
        assert (top.path, top.text) == ("kite.txt", "a red kite") and top.score == pytest.approx(1.0, abs=1e-5)
    boat = idx.query(text="a blue boat on a lake", target="text", k=1)[0]
    assert boat.path == "spaced.txt" and boat.score == pytest.approx(1.0, abs=1e-5)
    raw = (root / "spaced.txt").read_text()
    assert raw[boat.row["char_start"] : boat.row["char_end"]] == "a blue boat on a lake"
    assert np.allclose(encoder.encode(["a red kite\n", "  a red kite"]), encoder.encode(["a red kite"] * 2), atol=1e-6)


def test_manifest_items_and_composed_pairs(good):
    _, index, _ = good
    rows = rows_by_id(index)
    edit = rows["image+text:edit-1"]
    assert edit["text"] == "the same picture at night" and edit["path"] == "photos/b.png"
    assert json.loads(edit["metadata"]) == {"split": "test"}
    assert edit["source"] == "items.jsonl:1"
    assert rows["text:plain-1"]["text"] == "a declared text item"
    assert rows["video+text:vt-1"]["frames"] == 4
    # --pairs composed: image + sidecar caption as one item
    pair = [r for r in rows.values() if r["modality"] == "image+text" and r["source"] == "pair"]
    assert [r["path"] for r in pair] == ["dups/a_copy.jpg"]
    assert pair[0]["text"] == "a gradient photo of stripes"
    assert len([r for r in rows.values() if r["modality"] == "video+text" and r["source"] == "pair"]) == 6


def test_vectors_equal_the_encoders(good, encoder):
    """Ingest goes through the same forward as Encoder.encode: the stored vectors are UNITE's."""
    root, index, _ = good
    rows = rows_by_id(index)
    long_text = (root / "notes/long.md").read_text()
    first_passage = next(r for r in rows.values() if r["path"] == "notes/long.md" and r["char_start"] == 0)
    cases = [
        (next(r for r in rows.values() if r["modality"] == "image" and r["path"] == "photos/b.png"),
         {"image": root / "photos/b.png"}),
        (next(r for r in rows.values() if r["modality"] == "video" and r["path"] == "clips/clip.webm"),
         {"video": root / "clips/clip.webm"}),
        (first_passage, {"text": long_text[: first_passage["char_end"]]}),
        (rows["image+text:edit-1"], {"image": root / "photos/b.png", "text": "the same picture at night"}),
    ]  # fmt: skip
    want = encoder.encode([item for _, item in cases])
    for (row, _), vec in zip(cases, want, strict=True):
        np.testing.assert_allclose(row["vector"], vec, atol=1e-5)


def test_faiss_matches_the_table(good):
    _, index, _ = good
    store = IndexStore(index)
    manifest = store.require_manifest()
    for shard, entry in manifest["shards"].items():
        table = store.read_rows(shard, ["key", "vector"])
        faiss_index = Snapshot.open(index).readers[shard].index()
        assert faiss_index.ntotal == table.num_rows == entry["rows"]
        assert entry["index"]["type"] == "flat"
        vecs = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
        scores, found = faiss_index.search(vecs, 1)
        np.testing.assert_array_equal(found[:, 0], table.column("key").to_numpy())
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_manifest_records_model_settings_and_versions(good, encoder):
    root, index, _ = good
    manifest = IndexStore(index).require_manifest()
    assert manifest["encoder"] == json.loads(json.dumps(encoder.settings))
    assert manifest["encoder"]["prompt_version"] == "unite-v1" and manifest["encoder"]["dim"] == encoder.dim
    assert manifest["ingest"] == {
        "segment_seconds": 4.0,
        "segment_overlap": 1.0,
        "passage_chars": 200,
        "pairs": "composed",
    }
    assert manifest["corpus"] == str(root)
    assert {"lancedb", "pyarrow", "torch", "transformers"} <= set(manifest["versions"])
    assert not list(index.rglob("*.pkl")) and not list(index.rglob("*.pickle"))


def test_rerun_on_unchanged_corpus_encodes_nothing(good, encoder):
    root, index, _ = good
    before = rows_by_id(index)
    published = IndexStore(index).require_manifest()["shards"]
    report = ingest(root, index, encoder=encoder, pairs="composed", **OPTS)
    assert (report.encoded_items, report.encoded_rows, report.removed_items) == (0, 0, 0)
    assert report.unchanged_items == report.items
    assert not report.published
    assert IndexStore(index).require_manifest()["shards"] == published
    assert_same_rows(before, rows_by_id(index))


# --------------------------------------------------------------------------------------- bad input
def _deny(monkeypatch, path: Path) -> None:
    """Make one file unreadable. Tests run as root here, where chmod 000 does not stop a read."""
    path.chmod(0)
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("unite_search.corpus.open", guarded, raising=False)


def test_every_bad_input_is_reported_and_the_rest_indexed(tmp_path, encoder, monkeypatch):
    import unite_search.ingestion as ingestion

    root = tmp_path / "corpus"
    root.mkdir()
    bad = make_bad_corpus(root)
    _deny(monkeypatch, root / "locked.png")
    real_plan = ingestion.plan_units

    def plan_then_delete(*args, **kwargs):  # the file goes away between the read and decode stages
        units = real_plan(*args, **kwargs)
        (root / "vanishing.png").unlink()
        return units

    monkeypatch.setattr(ingestion, "plan_units", plan_then_delete)
    report = ingest(root, tmp_path / "index", encoder=encoder)
    assert report.status == "finished_with_failures" and report.exit_code == 3
    got = {p.path: p for p in report.failures}
    assert set(got) == set(bad), report.summary()
    for rel, stage in bad.items():
        assert got[rel].stage == stage, (rel, got[rel])
    assert "UTF-8" in got["latin1.txt"].reason
    assert "too large" in got["bomb.png"].reason
    assert "empty" in got["empty.jpg"].reason
    assert "disappeared" in got["vanishing.png"].reason
    assert "Permission denied" in got["locked.png"].reason
    assert "extension says image" in got["text_named.jpg"].reason
    rows = rows_by_id(tmp_path / "index")
    assert sorted(r["path"] for r in rows.values()) == ["good.png", "note.txt"]
    # the run report on disk lists them too
    last = IndexStore(tmp_path / "index").last_run()
    assert {p["path"] for p in last["failures"]} == set(bad)


def test_broken_symlink_loop_and_fifo(tmp_path, encoder):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    write_photo(root / "sub/ok.png", seed=1)
    (root / "sub/loop").symlink_to(root)  # a folder link back to the root
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    os.mkfifo(root / "pipe.mp4")
    report = ingest(root, tmp_path / "index", encoder=encoder)
    assert [(p.path, p.reason) for p in report.failures] == [("dangling.jpg", "broken symlink")]
    skipped = {p.path: p.reason for p in report.skipped}
    assert skipped == {"pipe.mp4": "not a regular file", "sub/loop": "symlink loop (folder already visited)"}
    assert [r["path"] for r in rows_by_id(tmp_path / "index").values()] == ["sub/ok.png"]


def test_bad_manifest_lines_are_reported_with_line_numbers(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "p.png", seed=1)
    lines = [
        json.dumps({"id": "ok", "text": "fine", "image": "p.png"}),
        "{not json",
        json.dumps({"text": "no id"}),
        json.dumps({"id": "m", "image": "missing.png"}),
        json.dumps({"id": "ok", "text": "duplicate id"}),
        json.dumps({"id": "x", "text": "t", "colour": "red"}),
        json.dumps({"id": "e", "text": "   "}),
    ]
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    report = ingest(root, tmp_path / "index", encoder=encoder)
    got = {p.path: p.reason for p in report.failures}
    assert sorted(got) == ["m.jsonl:2", "m.jsonl:3", "m.jsonl:4", "m.jsonl:5", "m.jsonl:6", "m.jsonl:7"]
    assert "JSON" in got["m.jsonl:2"] and "'id'" in got["m.jsonl:3"] and "not found" in got["m.jsonl:4"]
    assert "already declared at m.jsonl:1" in got["m.jsonl:5"] and "colour" in got["m.jsonl:6"]
    assert "image+text:ok" in rows_by_id(tmp_path / "index")


def test_raise_policy_stops_and_publishes_nothing(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    before = rows_by_id(index)
    versions = IndexStore(index).tables.versions()
    # new good files, and one that fails only at decode time (so rows were already being written)
    for i in range(3):
        write_photo(root / f"new{i}.png", seed=10 + i)
    whole = write_photo(tmp_path / "whole.jpg", seed=5, size=(300, 200))
    (root / "zz_truncated.jpg").write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(IngestError, match=r"zz_truncated\.jpg") as info:
        ingest(root, index, encoder=encoder, on_error="raise", commit_rows=1)
    assert info.value.problem.stage == "decode"
    assert_same_rows(before, rows_by_id(index))
    store = IndexStore(index)
    for shard, version in versions.items():  # tables rolled back: latest rows equal the published ones
        assert store.tables.open(shard).count_rows() == store.tables.open(shard, version).count_rows()
    assert store.last_run()["status"] == "failed"
    # a read-stage failure stops before anything is written
    (root / "zz_truncated.jpg").write_bytes(b"")
    with pytest.raises(IngestError, match="empty"):
        ingest(root, index, encoder=encoder, on_error="raise")
    assert_same_rows(before, rows_by_id(index))


# ------------------------------------------------------------------------------------ crash, resume
KILL_SCRIPT = """
import sys
from unite_search import Encoder
from unite_search.ingestion import ingest
enc = Encoder.load(sys.argv[1], device="cpu", workers=1)
ingest(sys.argv[2], sys.argv[3], encoder=enc, commit_rows=1, segment_seconds=4.0, segment_overlap=1.0,
       passage_chars=200)
"""


def _committed_versions(index: Path) -> int:
    return sum(
        len(list(t.glob("_versions/*.manifest"))) for t in (index / "tables").glob("*.lance") if t.name != "files.lance"
    )


def test_sigkill_mid_ingest_then_resume(tmp_path, tiny_dir, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "first.png", seed=1)
    (root / "first.txt").write_text("the first text")
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder, **OPTS)
    published = rows_by_id(index)
    # a bigger second batch, killed while it is being written
    for i in range(6):
        write_photo(root / f"img/{i}.png", seed=20 + i)
        (root / f"txt/{i}.txt").parent.mkdir(exist_ok=True)
        (root / f"txt/{i}.txt").write_text(f"text number {i} " * (5 + i))
    write_clip(root / "long.mp4", 96, fps=8, seed=3)  # 12 s: 4 segments
    start = _committed_versions(index)
    env = {**os.environ, "LANCEDB_LOG": "error"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_dir), str(root), str(index)], env=env)
    deadline = time.time() + 120
    while _committed_versions(index) < start + 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = _committed_versions(index) - start
    assert written >= 4
    # readers still see the last published state
    assert_same_rows(published, rows_by_id(index))
    # rerun finishes the job: same rows and vectors as a clean run, each exactly once
    report = ingest(root, index, encoder=encoder, **OPTS)
    assert report.status == "ok", report.summary()
    assert 0 < report.encoded_items < report.items
    clean = tmp_path / "clean"
    ingest(root, clean, encoder=encoder, **OPTS)
    assert_same_rows(rows_by_id(clean), rows_by_id(index))
    again = ingest(root, index, encoder=encoder, **OPTS)
    assert again.encoded_items == 0 and not again.published


def test_unit_cut_short_is_redone(tmp_path, encoder):
    """A segmented video whose rows were only partly written (a crash between commits) is redone whole."""
    root = tmp_path / "corpus"
    root.mkdir()
    write_clip(root / "long.mp4", 96, fps=8, seed=3)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder, **OPTS)
    full = rows_by_id(index)
    store = IndexStore(index)
    victim = next(r["id"] for r in full.values() if r["start"] == 3.0)
    store.tables.open("video").delete(f"id = '{victim}'")
    (index / "ingest.writing").touch()  # as the killed run left it: its table writes are not published
    report = ingest(root, index, encoder=encoder, **OPTS)
    assert report.redone_items == 1 and report.encoded_rows == 4
    assert_same_rows(full, rows_by_id(index))


# ------------------------------------------------------------------------------ updates, removals
def test_changed_moved_and_removed_files(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "keep.png", seed=1)
    write_photo(root / "change.png", seed=2)
    write_photo(root / "move.png", seed=3)
    write_photo(root / "gone.png", seed=4)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    before = {r["path"]: r for r in rows_by_id(index).values()}

    write_photo(root / "change.png", seed=99)
    os.utime(root / "change.png", ns=(1, 1))  # a new mtime, so the read cache cannot hide the change
    (root / "sub").mkdir()
    shutil.move(root / "move.png", root / "sub/moved.png")
    (root / "gone.png").unlink()
    report = ingest(root, index, encoder=encoder)
    assert report.encoded_items == 1  # only the changed file
    assert report.removed_items == 2  # the old content of change.png, and gone.png
    assert report.relabeled_items == 1
    assert "removed 2" in report.summary()
    after = {r["path"]: r for r in rows_by_id(index).values()}
    assert sorted(after) == ["change.png", "keep.png", "sub/moved.png"]
    np.testing.assert_array_equal(after["keep.png"]["vector"], before["keep.png"]["vector"])
    np.testing.assert_array_equal(after["sub/moved.png"]["vector"], before["move.png"]["vector"])
    assert after["sub/moved.png"]["paths"] == ["sub/moved.png"]
    assert float(after["change.png"]["vector"] @ before["change.png"]["vector"]) < 0.99999
    faiss_index = Snapshot.open(index).readers["image"].index()
    assert faiss_index.ntotal == 3


# -------------------------------------------------------------------------------------- safety
def test_second_ingest_is_refused_while_one_holds_the_lock(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    store = IndexStore(tmp_path / "index")
    with store.lock(), pytest.raises(IndexLockedError, match="being written by another ingest \\(pid"):
        ingest(root, tmp_path / "index", encoder=encoder)
    assert ingest(root, tmp_path / "index", encoder=encoder).status == "ok"  # released afterwards


def test_lock_held_by_another_process(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom unite_search.store import IndexStore\n"
         "with IndexStore(sys.argv[1]).lock():\n    print('held', flush=True)\n    time.sleep(60)\n", str(index)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
            ingest(root, index, encoder=encoder)
    finally:
        holder.kill()
        holder.wait()
    assert ingest(root, index, encoder=encoder).status == "ok"  # the kernel dropped the dead holder's lock


def test_mismatched_model_settings_or_corpus_are_refused(tmp_path, tiny_dir, encoder):
    from unite_search import Encoder, EncoderSettings
    from unite_search.testing import tiny_model

    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    published = IndexStore(index).require_manifest()
    other_settings = Encoder.load(tiny_dir, device="cpu", settings=EncoderSettings(frames=8))
    with pytest.raises(IndexMismatchError, match=r"encoder.frames: index has None, this run 8(.|\n)*rm -r"):
        ingest(root, index, encoder=other_settings)
    other_model = Encoder.load(tiny_model(tmp_path / "other", seed=1), device="cpu")
    with pytest.raises(IndexMismatchError, match=r"encoder\.revision"):
        ingest(root, index, encoder=other_model)
    with pytest.raises(IndexMismatchError, match=r"ingest\.segment_seconds"):
        ingest(root, index, encoder=encoder, segment_seconds=10)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(IndexMismatchError, match="indexes the corpus"):
        ingest(elsewhere, index, encoder=encoder)
    # a refused run publishes nothing; its run log says why it was refused
    assert IndexStore(index).require_manifest() == published
    last = IndexStore(index).last_run()
    assert last["status"] == "failed" and "indexes the corpus" in last["error"] and last["items"] == 0


def test_default_index_dir_and_bad_arguments(tmp_path, encoder, monkeypatch):
    root = tmp_path / "photos"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    report = ingest("~/photos", encoder=encoder)  # ~ is expanded, as a shell would
    assert Path(report.index) == Path("indexes/photos") and report.corpus == str(root)
    assert (tmp_path / "indexes/photos/manifest.json").exists()
    with pytest.raises(ValueError, match="on_error"):
        ingest(root, encoder=encoder, on_error="ignore")
    with pytest.raises(ValueError, match="pairs"):
        ingest(root, encoder=encoder, pairs="all")
    with pytest.raises(InputError, match="not a folder"):
        ingest(tmp_path / "missing", encoder=encoder)


def test_index_inside_the_corpus_is_not_walked(tmp_path, encoder, monkeypatch):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    monkeypatch.chdir(root)
    ingest(".", encoder=encoder)  # index lands in ./indexes/corpus, inside the corpus
    report = ingest(".", encoder=encoder)
    assert report.encoded_items == 0 and report.failures == []
    assert [r["path"] for r in rows_by_id(root / "indexes/corpus").values()] == ["a.png"]


def test_segments_of_a_long_video_reuse_the_read_stage_count_without_decord(tmp_path, encoder, monkeypatch):
    """With PyAV, an mkv stores no frame count: counting once per segment would make ingest quadratic."""
    from conftest import write_index_video

    import unite_search.video as video

    root = tmp_path / "corpus"
    root.mkdir()
    write_index_video(root / "long.mkv", 200, fps=10)  # 20 s: 7 segments of 4 s
    monkeypatch.setattr(video, "_backend", lambda name: "av")  # as on a machine without decord
    decoded = []
    real = video._read_av

    def counted(*args, **kwargs):
        frames, info = real(*args, **kwargs)
        decoded.append(info.decoded)
        return frames, info

    monkeypatch.setattr(video, "_read_av", counted)
    report = ingest(root, tmp_path / "index", encoder=encoder, **OPTS)
    assert report.status == "ok" and report.encoded_rows == 7 == len(decoded)
    assert sum(decoded) < 2 * 200, decoded  # each segment decodes about its own span (counting: 7 x 200)
    monkeypatch.undo()
    clean = tmp_path / "decord-index"
    ingest(root, clean, encoder=encoder, **OPTS)
    assert_same_rows(rows_by_id(clean), rows_by_id(tmp_path / "index"))  # the same frames either way


def test_an_oversized_caption_is_a_reported_failure_and_its_media_still_indexed(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    (root / "a.txt").write_text("a very long caption. " * 4000)  # 84 KB
    report = ingest(root, tmp_path / "index", encoder=encoder)
    assert [(p.path, p.stage) for p in report.failures] == [("a.txt", "read")]
    assert "above 65536" in report.failures[0].reason
    rows = IndexStore(tmp_path / "index").read_rows("image", ["path", "caption"]).to_pylist()
    assert rows == [{"path": "a.png", "caption": None}]


# ------------------------------------------------------------------------ what the report tells
def test_video_failures_are_told_in_words_the_same_every_run(tmp_path, encoder):
    """Real broken files: the reason says what is wrong (no decoder internals, times or paths), the same on
    a rerun; the decoder's own message is in the run log only."""
    from corpora import write_audio_only, write_damaged_mp4, write_truncated_mp4

    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "good.png", seed=1)
    write_audio_only(root / "audio_only.mp4")
    write_truncated_mp4(root / "truncated.mp4")
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_damaged_mp4(root / "damaged.mp4")
    expected = {
        "audio_only.mp4": "file has no video stream (audio only)",
        "truncated.mp4": "truncated file (an incomplete copy or download)",
        "noise.mp4": "not a video: its content is no known video format",
        "damaged.mp4": "damaged or not a video (no decoder can open it)",
    }
    index = tmp_path / "index"
    first = ingest(root, index, encoder=encoder)
    time.sleep(1.1)  # a decoder message with a clock in it would differ
    again = ingest(root, index, encoder=encoder)
    for report in (first, again):
        assert {p.path: p.reason for p in report.failures} == expected
        assert report.status == "finished_with_failures" and report.exit_code == 3
    summary = again.summary()
    for internal in ("moov", "Invalid data", "Errno", str(root), ".cc:"):
        assert internal not in summary, internal
    detail = {p["path"]: p.get("detail") for p in IndexStore(index).last_run()["failures"]}
    assert "moov atom not found" in detail["truncated.mp4"]  # FFmpeg's own words, kept in the run log
    assert "Invalid data" in detail["damaged.mp4"]


def test_progress_bar_counts_the_items_the_summary_counts(tmp_path, encoder, capsys):
    from corpora import LONG_TEXT

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_clip(root / "long.mp4", 80, fps=8, seed=2)  # 10 s: 3 segments
    (root / "long.md").write_text(LONG_TEXT)  # several passages
    report = ingest(root, tmp_path / "index", encoder=encoder, progress=True, **OPTS)
    err = capsys.readouterr().err
    assert report.items == report.encoded_items == 3 and report.encoded_rows > 6
    done, total = re.findall(r"encode: .*?(\d+)/(\d+) \[", err)[-1]
    assert int(done) == int(total) == report.items
    assert "item/s" in err and f"items {report.items}:" in report.summary()


def test_summary_names_skipped_files(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    for i in range(22):
        (root / f".hidden{i:02d}").write_text("x")
    os.mkfifo(root / "pipe.mp4")
    summary = ingest(root, tmp_path / "index", encoder=encoder).summary()
    assert "skipped 23 (hidden, special files, links out of the corpus):" in summary
    assert "  .hidden00 [hidden]" in summary and "  .hidden19 [hidden]" in summary
    assert ".hidden20" not in summary and "  ... and 3 more (unite-search info " in summary


def test_old_run_logs_read_with_the_new_status(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    log = IndexStore(index).last_run()
    log["status"] = "skipped"  # how runs before the rename recorded "finished, some inputs failed"
    (index / "runs" / "99991231T000000000000Z.json").write_text(json.dumps(log))
    assert IndexStore(index).last_run()["status"] == "finished_with_failures"


# ------------------------------------------------------------------------ errors: whose fault
def test_an_encoder_with_conflicting_arguments_is_refused(tmp_path, tiny_dir, encoder):
    from unite_search import ConfigError, EncoderSettings

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    conflicts = [
        ({"model": "unite-base-2b"}, "model 'unite-base-2b'"),
        ({"dtype": "bfloat16"}, "dtype 'bfloat16'"),
        ({"device": "cpu:1"}, "device 'cpu:1'"),
        ({"settings": EncoderSettings(frames=8)}, "settings"),
    ]
    for kwargs, said in conflicts:
        with pytest.raises(ConfigError, match=re.escape(said)):
            ingest(root, index, encoder=encoder, **kwargs)
    assert not index.exists()  # refused before anything was made
    same = {"model": tiny_dir, "device": "cpu", "dtype": "float32", "settings": EncoderSettings()}
    assert ingest(root, index, encoder=encoder, **same).status == "ok"


def test_a_bug_or_memory_error_stops_the_run_with_its_traceback_in_the_run_log(tmp_path, encoder, monkeypatch):
    """Faults injected into real workers: a file's I/O error fails that file, a bug or MemoryError stops the run."""
    import unite_search.pipeline as pipeline
    import unite_search.units as units
    from unite_search import IngestCrashError

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "b.png", seed=2)
    (root / "note.txt").write_text("a short note")
    index = tmp_path / "index"
    real_prepare, real_read = pipeline.prepare_task, units.read_file

    def out_of_memory(enc, task):  # a decode worker
        if str(task.item.get("image", "")).endswith("b.png"):
            raise MemoryError
        return real_prepare(enc, task)

    def bug(entry, **kwargs):  # a read worker
        if entry.rel == "b.png":
            return None + 1
        return real_read(entry, **kwargs)

    for target, name, fake, cause, said in [
        (pipeline, "prepare_task", out_of_memory, MemoryError, "ran out of memory"),
        (units, "read_file", bug, TypeError, "internal error"),
    ]:
        with monkeypatch.context() as m:
            m.setattr(target, name, fake)
            with pytest.raises(IngestCrashError, match=said) as info:
                ingest(root, index, encoder=encoder)
        assert isinstance(info.value.__cause__, cause) and isinstance(info.value, RuntimeError)
        assert f"traceback is in {info.value.run_log}" in str(info.value) and "\n" not in str(info.value)
        log = json.loads(Path(info.value.run_log).read_text())
        assert log["status"] == "failed" and cause.__name__ in log["error"]
        assert f"in {fake.__name__}" in log["traceback"] and cause.__name__ in log["traceback"]

    def denied(path, span, source):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(units, "read_passage", denied)
    report = ingest(root, index, encoder=encoder)
    assert [(p.path, p.stage, p.reason) for p in report.failures] == [
        ("note.txt", "decode", "cannot read file: Permission denied")
    ]
    assert report.encoded_items == 2 and report.status == "finished_with_failures"


def test_user_mistakes_are_typed_errors_that_are_still_value_errors(tmp_path, tiny_dir, encoder):
    from unite_search import ConfigError, DeviceError, Encoder, EncoderSettings, InputError

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    mistakes = [
        (lambda: EncoderSettings(fps=0), ConfigError),
        (lambda: EncoderSettings(min_frames=8, max_frames=4), ConfigError),
        (lambda: ingest(root, encoder=encoder, on_error="ignore"), ConfigError),
        (lambda: ingest(root, encoder=encoder, pairs="all"), ConfigError),
        (lambda: ingest(root, encoder=encoder, segment_seconds=5, segment_overlap=5), ConfigError),
        (lambda: ingest(root, encoder=encoder, memory_bytes=0), ConfigError),
        (lambda: ingest(root / "a.png", encoder=encoder), InputError),
        (lambda: Encoder.load(tiny_dir, device="gpu"), DeviceError),
        (lambda: Encoder.load(tiny_dir, device="cpu", dtype="float8"), ConfigError),
        (lambda: Encoder.load(tiny_dir, device="cpu", attn="fast"), ConfigError),
        (lambda: encoder.encode(["x"], token_budget=-1), ConfigError),
    ]
    for call, kind in mistakes:
        with pytest.raises(kind) as info:
            call()
        assert isinstance(info.value, ValueError)
    with pytest.raises(InputError, match=r"is a file, and ingest takes a folder.*folder of its own.*embed"):
        ingest(root / "a.png", encoder=encoder)


# ------------------------------------------------------------------------------ no work, no model
def test_a_rerun_that_needs_no_encoding_never_makes_the_encoder(tmp_path, tiny_dir, monkeypatch):
    from unite_search import Encoder

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "b.png", seed=2)
    write_clip(root / "clip.mp4", 16, fps=8, seed=1)
    (root / "note.txt").write_text("a note about the harbour")
    index = tmp_path / "index"
    first = ingest(root, index, model=tiny_dir, device="cpu")
    assert first.encoded_items == 4 and first.timings["load"] > 0
    made = []
    real_load = Encoder.load.__func__

    def counting_load(cls, *args, **kwargs):
        made.append(args)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(Encoder, "load", classmethod(counting_load))
    same = ingest(root, index, model=tiny_dir, device="cpu")  # nothing changed: stops after the walk
    assert (same.status, same.unchanged_items, same.encoded_items, same.published) == ("ok", 4, 0, False)
    assert "read" not in same.timings and same.shards == first.shards

    (root / "b.png").rename(root / "moved.png")  # a move and a removal: a full pass, still no encoding
    (root / "note.txt").unlink()
    moved = ingest(root, index, model=tiny_dir, device="cpu")
    assert (moved.relabeled_items, moved.removed_items, moved.encoded_items) == (1, 1, 0)
    assert moved.timings["load"] == 0 and made == []
    assert ingest(root, index, model=tiny_dir, device="cpu").timings.get("read") is None  # stamped again

    os.utime(root / "a.png", ns=(5, 5))  # same bytes, new mtime: read again, nothing to encode
    touched = ingest(root, index, model=tiny_dir, device="cpu")
    assert "read" in touched.timings and touched.encoded_items == 0 and made == []

    write_photo(root / "new.png", seed=3)  # one new file: now the encoder is made, and only now
    grown = ingest(root, index, model=tiny_dir, device="cpu")
    assert grown.encoded_items == 1 and len(made) == 1 and grown.timings["load"] > 0
    hits = [h.path for h in __import__("unite_search").Index.open(index).query(image=root / "new.png", k=1)]
    assert hits == ["new.png"]


def test_a_no_op_rerun_imports_neither_torch_nor_lancedb(tmp_path, tiny_dir):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    (root / "note.txt").write_text("a note")
    index = tmp_path / "index"
    ingest(root, index, model=tiny_dir)
    code = (
        "import sys; from unite_search.ingestion import ingest; "
        f"r = ingest({str(root)!r}, {str(index)!r}, model={str(tiny_dir)!r}); "
        "print(r.status, r.unchanged_items, sorted(m for m in ('torch', 'transformers', 'lancedb', 'faiss') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "ok 2 []"
    (index / "ingest.writing").touch()  # as a run killed before it published leaves it: a full pass
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok 2 ") and "lancedb" in out.stdout and "torch" not in out.stdout
    assert not (index / "ingest.writing").exists()


def test_the_encode_stage_takes_the_thread_counts_it_is_given(tmp_path, encoder, monkeypatch):
    import torch

    from unite_search.encoder import default_workers

    root = tmp_path / "corpus"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    seen, real_forward = [], encoder.forward

    def watched(batch):
        seen.append(torch.get_num_threads())
        return real_forward(batch)

    monkeypatch.setattr(encoder, "forward", watched)
    before = torch.get_num_threads()
    report = ingest(root, tmp_path / "index", encoder=encoder)
    want_torch, want_decode = before, default_workers()  # torch as it was set, decoding min(8, cores)
    assert report.threads == {"torch": want_torch, "decode": want_decode}
    assert seen and set(seen) == {want_torch} and torch.get_num_threads() == before
    write_photo(root / "p9.png", seed=9)
    seen.clear()
    torch.set_num_threads(2)
    report = ingest(root, tmp_path / "index", encoder=encoder, torch_threads=1, workers=3)
    assert report.threads == {"torch": 1, "decode": 3} and set(seen) == {1} and torch.get_num_threads() == 2
    torch.set_num_threads(before)
