"""Ingest end to end with the tiny model: every kind of input indexed, and bad input reported.

Reruns, kills and resumes, locks, refusals and the lazy model are in ``test_ingest_runs.py``."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import numpy as np
import pytest
from corpora import make_bad_corpus, make_good_corpus, write_photo

from unite_search.ingestion import IngestError, ingest
from unite_search.reader import Snapshot
from unite_search.store import IndexStore

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
    assert [(r["path"], r["paths"]) for r in pair] == [("photos/a.jpg", ["photos/a.jpg"])]  # the captioned copy
    assert pair[0]["text"] == "a gradient photo of stripes"
    assert len([r for r in rows.values() if r["modality"] == "video+text" and r["source"] == "pair"]) == 6


def test_a_hidden_file_a_manifest_names_is_only_the_manifests_item(tmp_path, encoder):
    root, index = tmp_path / "corpus", tmp_path / "index"
    write_photo(root / ".secret.jpg", seed=1)
    (root / "items.jsonl").write_text(json.dumps({"id": "x1", "image": ".secret.jpg", "text": "a photo"}) + "\n")
    report = ingest(root, index, encoder=encoder)
    assert [p.path for p in report.skipped] == [".secret.jpg"] and report.items == 1
    before = rows_by_id(index)
    assert list(before) == ["image+text:x1"]  # not an image item of its own as well
    write_photo(root / ".secret.jpg", seed=2)  # new bytes in a file the walk does not take: still seen
    again = ingest(root, index, encoder=encoder)
    assert again.encoded_items == 1
    assert rows_by_id(index)["image+text:x1"]["content_hash"] != before["image+text:x1"]["content_hash"]


def test_copies_of_a_photo_with_their_own_captions_make_a_pair_each(tmp_path, encoder):
    root, index = tmp_path / "corpus", tmp_path / "index"
    for name in ("a", "b", "c"):
        write_photo(root / f"{name}.jpg", seed=1)  # the same bytes three times
    (root / "a.txt").write_text("a cat on a sofa")
    (root / "b.txt").write_text("the same cat, now at night")
    (root / "c.txt").write_text("a cat on a sofa")
    report = ingest(root, index, encoder=encoder, pairs="composed")
    assert report.items == 3 and not report.failures
    rows = sorted(rows_by_id(index).values(), key=lambda r: (r["modality"], r["path"]))
    assert [(r["modality"], r["paths"], r["caption"], r["text"]) for r in rows] == [
        ("image", ["a.jpg", "b.jpg", "c.jpg"], "a cat on a sofa", None),
        ("image+text", ["a.jpg", "c.jpg"], "a cat on a sofa", "a cat on a sofa"),
        ("image+text", ["b.jpg"], "the same cat, now at night", "the same cat, now at night"),
    ]


def test_manifest_lines_that_move_keep_their_rows_and_say_where_they_are_now(tmp_path, encoder):
    root, index = tmp_path / "corpus", tmp_path / "index"
    root.mkdir()
    lines = [json.dumps({"id": f"t{i}", "text": f"item number {i}"}) for i in range(3)]
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    ingest(root, index, encoder=encoder)
    (root / "items.jsonl").write_text("\n".join(lines[::-1]) + "\n")  # the same items, in another order
    again = ingest(root, index, encoder=encoder)
    assert (again.encoded_items, again.relabeled_items) == (0, 2)  # t1 stayed on line 2
    assert {r["id"]: r["source"] for r in rows_by_id(index).values()} == {
        "t0": "items.jsonl:3", "t1": "items.jsonl:2", "t2": "items.jsonl:1"
    }  # fmt: skip


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
    # every file is an item, failed at any stage: the summary's counts add up ("items 4 ... failed 13" before)
    assert report.items == report.encoded_items + len(report.failures) == 2 + len(bad)
    assert f"items {report.items}: encoded 2 " in report.summary()
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
    (root / "a.jpg").symlink_to(root / "b.jpg")  # two links leading to each other: a loop, not a broken link
    (root / "b.jpg").symlink_to(root / "a.jpg")
    report = ingest(root, tmp_path / "index", encoder=encoder)
    assert [(p.path, p.reason) for p in report.failures] == [("dangling.jpg", "broken symlink")]
    skipped = {p.path: p.reason for p in report.skipped}
    assert skipped == {"pipe.mp4": "not a regular file", "sub/loop": "symlink loop (folder already visited)",
                       "a.jpg": "symlink loop", "b.jpg": "symlink loop"}  # fmt: skip
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


def test_a_manifest_items_text_is_stored_as_the_model_saw_it(tmp_path, encoder):
    """The encoder strips a text's ends; the row kept them, so its text column was not the text embedded."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "items.jsonl").write_text(json.dumps({"id": "a", "text": "  fine text \n"}) + "\n")
    ingest(root, tmp_path / "index", encoder=encoder)
    row = rows_by_id(tmp_path / "index")["text:a"]
    assert row["text"] == "fine text"
    np.testing.assert_allclose(row["vector"], encoder.encode([{"text": "fine text"}])[0], atol=1e-5)


def test_a_long_avi_is_ingested_in_one_pass(tmp_path, encoder, monkeypatch):
    """Each segment of an AVI was decoded from frame 0 (it keeps no times to seek by). Ingest tells the reader
    which segment comes next, so one decoder goes through the clip; the rows are the segments' own encodings."""
    from conftest import write_index_video

    from unite_search import videopass
    from unite_search.video import probe

    root = tmp_path / "corpus"
    root.mkdir()
    clip = write_index_video(root / "long.avi", 200)  # 20 s
    decoded = []
    read = videopass.Pass.read
    monkeypatch.setattr(videopass.Pass, "read", lambda p, *a: (lambda r: decoded.append(r[1]) or r)(read(p, *a)))
    ingest(root, tmp_path / "index", encoder=encoder, workers=1, segment_seconds=4.0, segment_overlap=1.5)
    rows = sorted((r for r in rows_by_id(tmp_path / "index").values()), key=lambda r: r["start"])
    assert len(rows) == 8 and sum(decoded) == 200  # 8 segments; each frame decoded once
    assert videopass._PASSES == {}  # the run closed the pass it kept for a next segment
    found = probe(clip)
    for row in rows:
        video = encoder.visual("video", str(clip), start=row["start"], end=row["end"], probe=found)
        np.testing.assert_allclose(row["vector"], encoder.encode([{"video": video}])[0], atol=1e-5)


def test_the_python_api_prints_no_lancedb_notice(tmp_path, tiny_dir):
    """A first ingest from Python printed LanceDB's "No existing dataset at .../files.lance, it will be created"
    (a WARN line on the terminal); the command line hid it by its log setting."""
    import subprocess
    import sys

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    code = "import sys; from unite_search import ingest; ingest(*sys.argv[1:3], model=sys.argv[3], device='cpu')"
    env = {k: v for k, v in os.environ.items() if k != "LANCEDB_LOG"}
    done = subprocess.run([sys.executable, "-c", code, str(root), str(tmp_path / "index"), str(tiny_dir)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "WARN" not in done.stderr and "it will be created" not in done.stderr, done.stderr
