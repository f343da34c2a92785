"""Ingest reruns that update an index: changed, moved and removed files, manifest items whose content
changes under their id (also across a run stopped before it published), files mended in place, a moved
model folder."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from corpora import write_photo
from test_ingest import rows_by_id

from unite_search.ingestion import ingest
from unite_search.reader import Snapshot
from unite_search.store import IndexStore


def test_a_jsonl_item_whose_content_changes_is_searched_by_its_new_vector(tmp_path, encoder, monkeypatch):
    """The item keeps its id, so its key: the publish learns from ingest that its row was written again,
    also when the run that wrote it stopped before it published, and the index holds the new vector."""
    from unite_search import IngestCrashError
    from unite_search.schema import row_key
    from unite_search.verify import verify

    root, index = tmp_path / "corpus", tmp_path / "index"
    root.mkdir()
    lines = [json.dumps({"id": f"item{i}", "text": f"the number {i} is {('even', 'odd')[i % 2]}"}) for i in range(12)]
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    ingest(root, index, encoder=encoder)
    lines[3] = json.dumps({"id": "item3", "text": "a different sentence about purple elephants dancing"})
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")

    def stopped(self, *args, **kwargs):
        raise MemoryError  # the run stops after its table writes, before the manifest names them

    with monkeypatch.context() as m:
        m.setattr(IndexStore, "publish", stopped)
        with pytest.raises(IngestCrashError):
            ingest(root, index, encoder=encoder)
    key = row_key("item3")
    assert json.loads((index / "ingest.writing").read_text()) == {"replaced": {"text": [key]}}
    report = ingest(root, index, encoder=encoder)  # nothing to encode now, but the stopped run's rows to publish
    assert report.encoded_rows == 0 and report.published and not (index / "ingest.writing").exists()
    info = Snapshot.open(index).manifest["shards"]["text"]["index"]
    assert info["built"] == "updated" and info["last_update"] == {"added": 1, "removed": 1}
    stored = IndexStore(index).read_rows("text", ["key", "vector"]).to_pylist()
    np.testing.assert_array_equal(Snapshot.open(index).readers["text"].vector(key),
                                  next(r["vector"] for r in stored if r["key"] == key))  # fmt: skip
    assert not verify(index).damaged
    # a marker an older version left (empty: it does not say which keys) gets the changed shards built anew
    (index / "ingest.writing").write_text("")
    lines[4] = json.dumps({"id": "item4", "text": "another new sentence"})
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    ingest(root, index, encoder=encoder)
    info = Snapshot.open(index).manifest["shards"]["text"]["index"]
    assert info["built"] == "full" and info["rebuild_reason"] == "a full build was asked for"
    assert not verify(index).damaged


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


def test_an_item_deleted_by_a_stopped_run_and_back_with_new_content_gets_its_new_vector(tmp_path, encoder, monkeypatch):
    """The marker held only keys deleted and written again in one run: a run that deleted a line and
    stopped, then a run that found it back with other text, left the old vector in the index."""
    from unite_search import IngestCrashError
    from unite_search.schema import row_key
    from unite_search.verify import verify

    root, index = tmp_path / "corpus", tmp_path / "index"
    root.mkdir()
    lines = [json.dumps({"id": f"item{i}", "text": f"item number {i}"}) for i in range(6)]
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    ingest(root, index, encoder=encoder)
    (root / "items.jsonl").write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # item3's line removed

    def stopped(self, *args, **kwargs):
        raise MemoryError

    with monkeypatch.context() as m:
        m.setattr(IndexStore, "publish", stopped)
        with pytest.raises(IngestCrashError):
            ingest(root, index, encoder=encoder)
    lines[3] = json.dumps({"id": "item3", "text": "back, and about something else entirely"})
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    ingest(root, index, encoder=encoder)
    key = row_key("item3")
    stored = IndexStore(index).read_rows("text", ["key", "vector"]).to_pylist()
    np.testing.assert_array_equal(Snapshot.open(index).readers["text"].vector(key),
                                  next(r["vector"] for r in stored if r["key"] == key))  # fmt: skip
    assert not verify(index).damaged


def test_a_file_that_failed_to_decode_is_read_again_even_with_its_size_and_mtime(tmp_path, encoder):
    import hashlib

    root, index = tmp_path / "corpus", tmp_path / "index"
    good = write_photo(root / "p.jpg", seed=5).read_bytes()
    (root / "p.jpg").write_bytes(good[: len(good) // 3] + bytes(len(good) - len(good) // 3))  # pixels cut off
    stamp = os.stat(root / "p.jpg").st_mtime_ns
    first = ingest(root, index, encoder=encoder)
    assert [(p.path, p.stage) for p in first.failures] == [("p.jpg", "decode")]
    (root / "p.jpg").write_bytes(good)  # mended in place: the same size, and the mtime put back
    os.utime(root / "p.jpg", ns=(stamp, stamp))
    second = ingest(root, index, encoder=encoder)
    assert second.encoded_items == 1 and not second.failures
    (row,) = rows_by_id(index).values()
    assert row["content_hash"] == hashlib.sha256(good).hexdigest()  # not the cut file's, from a cache


def test_a_moved_model_folder_is_recorded_without_a_publish(tmp_path, tiny_dir):
    root, index, moved = tmp_path / "corpus", tmp_path / "index", tmp_path / "elsewhere" / "tiny"
    write_photo(root / "a.png", seed=1)
    ingest(root, index, model=tiny_dir, device="cpu")
    shutil.copytree(tiny_dir, moved)
    first = ingest(root, index, model=moved, device="cpu")  # the same weights: a full pass, nothing to publish
    assert "read" in first.timings and not first.published and first.encoded_items == 0
    assert Snapshot.open(index).manifest["encoder"]["model_id"] == str(moved)
    again = ingest(root, index, model=moved, device="cpu")  # so the next rerun stops after its walk again
    assert "read" not in again.timings and again.unchanged_items == 1
