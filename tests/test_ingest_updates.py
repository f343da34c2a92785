"""Ingest reruns that update an index: changed, moved and removed files, manifest items whose content
changes under their id (also across a run stopped before it published), files mended in place, a moved
model folder."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from corpora import write_photo
from PIL import Image
from test_ingest import assert_same_rows, rows_by_id

from unite_search.errors import ConfigError
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


def test_a_second_ctrl_c_while_decodes_end_still_stops_the_writer_first(tmp_path, encoder, monkeypatch):
    """The first Ctrl-C lands in the encode loop, a second while the decode threads are being ended: the
    writer was never closed, so it went on appending rows after ingest had raised and (under
    on_error="raise") rolled the tables back."""
    import threading

    from unite_search import batching
    from unite_search.tables import ShardTables

    root = tmp_path / "corpus"
    for i in range(3):
        write_photo(root / f"{i}.png", seed=i)
    index = tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    before = rows_by_id(index)
    for i in range(3, 9):
        write_photo(root / f"{i}.png", seed=i)

    real_add, real_map, calls = ShardTables.add_rows, batching.admitted_map, []

    def slow_add(self, *args, **kwargs):  # a slow disk: jobs wait in the writer's queue
        time.sleep(0.3)
        return real_add(self, *args, **kwargs)

    def interrupted_map(*args, **kwargs):
        decoded = real_map(*args, **kwargs)

        class Decoded:
            def __iter__(self):
                for out in decoded:
                    calls.append(1)
                    if len(calls) == 4:
                        raise KeyboardInterrupt  # the first Ctrl-C
                    yield out

            def close(self):
                decoded.close()
                raise KeyboardInterrupt  # the second, while the decode threads end

        return Decoded()

    monkeypatch.setattr(ShardTables, "add_rows", slow_add)
    monkeypatch.setattr(batching, "admitted_map", interrupted_map)
    with pytest.raises(KeyboardInterrupt):
        ingest(root, index, encoder=encoder, on_error="raise", commit_rows=1)
    assert not [t for t in threading.enumerate() if t.name == "unite-writer"]
    time.sleep(1.0)
    assert_same_rows(rows_by_id(index), before)  # rolled back, and nothing written after


def test_the_raise_policy_rolls_back_the_tables_a_run_made_too(tmp_path, nan_dir):
    """A first run (or one adding a shard) that stopped under on_error="raise" left the rows it had written
    in the shard tables it had made: only tables that existed before were rolled back."""
    from corpora import NAN_CHAR

    from unite_search import Encoder, IngestError

    encoder = Encoder.load(nan_dir, device="cpu", workers=2)
    root, index = tmp_path / "corpus", tmp_path / "index"
    write_photo(root / "photo.png", seed=1)
    assert ingest(root, index, encoder=encoder).status == "ok"
    before = rows_by_id(index)
    for i in range(6):
        (root / f"t{i}.txt").write_text(f"plain sentence number {i}")
    (root / "zz.txt").write_text(f"a sentence with a {NAN_CHAR} in it")  # fails at encoding, last
    with pytest.raises(IngestError, match=r"zz\.txt"):
        ingest(root, index, encoder=encoder, on_error="raise", commit_rows=1)
    assert IndexStore(index).tables.shards() == ["image"]  # the text table it made is gone
    assert_same_rows(rows_by_id(index), before)


def test_the_index_model_is_known_by_any_of_its_names(tmp_path):
    """A rerun given the index's own model (so that it takes the index's adapter too) may name it by an alias,
    or a folder by another path to it."""
    from unite_search.rerun import same_model

    (tmp_path / "m").mkdir()
    os.symlink(tmp_path / "m", tmp_path / "link")
    assert same_model("unite-base-2b", "friedrichor/Unite-Base-Qwen2-VL-2B")
    assert same_model("friedrichor/Unite-Base-Qwen2-VL-2B", "friedrichor/Unite-Base-Qwen2-VL-2B")
    assert same_model(tmp_path / "link", str(tmp_path / "m"))
    assert not same_model("unite-instruct-2b", "friedrichor/Unite-Base-Qwen2-VL-2B")
    assert not same_model(tmp_path / "m", "friedrichor/Unite-Base-Qwen2-VL-2B")


def test_rows_an_earlier_version_made_otherwise_are_made_again_once(tmp_path, encoder, monkeypatch):
    """An index built before read-stage edition 3 kept a portrait TIFF's swapped width and height (and its float
    pixels' old conversion) and manifest items' rows of before (their content_hash and text) on every rerun: the
    file cache trusted the TIFF's facts and the units' keys were unchanged."""
    import pyarrow.compute as pc

    from unite_search import corpus, passages, rerun, units

    root, index = tmp_path / "corpus", tmp_path / "index"
    root.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "portrait.tiff", tiffinfo={274: 6})  # turned upright: 72 wide, 96 high
    write_photo(root / "photo.png", seed=1)
    (root / "portrait.txt").write_text("a portrait")  # its caption: a composed pair's row too
    (root / "note.txt").write_text("a note about nothing in particular")
    (root / "chinese.txt").write_text("\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002" * 60)  # 420 characters, no space
    lines = [{"id": "edit", "image": "photo.png", "text": "the same at night"},
             {"id": "padded", "text": "  a text with spaces around it \n"},
             {"id": "plain", "text": "a plain text"}]  # fmt: skip
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    real_size = corpus._image_size
    with monkeypatch.context() as m:  # what earlier versions did
        m.setattr(corpus, "_image_size", lambda e: real_size(e)[::-1] if e.rel.endswith(".tiff") else real_size(e))
        m.setattr(units, "_made_otherwise_before", lambda d, media: False, raising=False)
        m.setattr(rerun, "READS", 2)
        m.setattr(passages, "SEPARATORS", (("\n\n", "\n\x01\n"), ("\n",), (". ",), (" ",)), raising=False)
        ingest(root, index, encoder=encoder, pairs="composed", passage_chars=100)
    sizes = {(r["width"], r["height"]) for r in rows_by_id(index).values() if r["path"] == "portrait.tiff"}
    assert sizes == {(96, 72)}
    tables = IndexStore(index).tables
    old = tables.db.open_table("files").to_arrow().drop_columns(["reads"])  # the file cache's layout of edition 2
    tables.db.create_table("files", data=old, mode="overwrite")
    assert pc.sum(pc.equal(old["rel"], "portrait.tiff")).as_py() == 1

    read = []
    real_read = units.read_file
    monkeypatch.setattr(units, "read_file", lambda entry, **kw: read.append(entry.rel) or real_read(entry, **kw))
    report = ingest(root, index, encoder=encoder, pairs="composed", passage_chars=100)
    # the other files' facts are trusted as they were; texts are cut again (their passages' ends were other)
    assert sorted(read) == ["chinese.txt", "note.txt", "portrait.tiff", "portrait.txt"]
    # the TIFF, its composed pair, the item with an image, the padded text and the Chinese text (now cut at its
    # sentence ends): encoded again, their old rows gone; the note, cut as before, is kept
    assert report.encoded_items == report.removed_items == 5, report.summary()
    after = rows_by_id(index)
    ingest(root, tmp_path / "fresh", encoder=encoder, pairs="composed", passage_chars=100)
    fresh = rows_by_id(tmp_path / "fresh")
    assert_same_rows(after, fresh)
    columns = ("unit", "width", "height", "text", "content_hash")
    assert {k: [r[c] for c in columns] for k, r in after.items()} == {
        k: [r[c] for c in columns] for k, r in fresh.items()
    }
    read.clear()
    assert ingest(root, index, encoder=encoder, pairs="composed", passage_chars=100).encoded_items == 0 and read == []


def test_a_rerun_keeps_the_index_options_it_was_built_with(tmp_path, encoder):
    """A rerun given no option built again every changed shard's index with the defaults (exact search, half
    the RAM), and ran without ``allow_outside``, removing the rows of the files it had let in. They are the
    index's own now; changing ``flat_max`` or ``index_memory`` chooses every shard's index kind again."""
    root, index = tmp_path / "corpus", tmp_path / "index"
    for i in range(6):
        write_photo(root / f"p{i}.png", seed=i)
    outside = write_photo(tmp_path / "elsewhere" / "far.png", seed=9)
    (root / "link.png").symlink_to(outside)

    def kinds():
        manifest = IndexStore(index).require_manifest()
        return {s: e["index"]["type"] for s, e in manifest["shards"].items()}, manifest["indexing"]

    ingest(root, index, encoder=encoder, flat_max=3, index_memory=1 << 30, allow_outside=True)
    assert kinds() == ({"image": "ivf"}, {"flat_max": 3, "index_memory": 1 << 30, "allow_outside": True})
    write_photo(root / "p6.png", seed=6)
    report = ingest(root, index, encoder=encoder)
    assert report.encoded_items == 1 and report.removed_items == 0  # the linked photo stays
    assert kinds() == ({"image": "ivf"}, {"flat_max": 3, "index_memory": 1 << 30, "allow_outside": True})
    assert ingest(root, index, encoder=encoder).encoded_items == 0
    said = []
    report = ingest(root, index, encoder=encoder, flat_max=1000, log=said.append)  # nothing else changed
    assert report.encoded_items == 0 and report.published
    assert kinds() == ({"image": "flat"}, {"flat_max": 1000, "index_memory": 1 << 30, "allow_outside": True})
    assert any("flat_max 3 -> 1000" in line for line in said)
    assert ingest(root, index, encoder=encoder).published is False  # recorded: a no-op again
    report = ingest(root, index, encoder=encoder, allow_outside=False)  # asked for: the link's row goes
    assert report.removed_items == 1 and kinds()[1]["allow_outside"] is False
    with pytest.raises(ConfigError, match="flat_max"):
        ingest(root, index, encoder=encoder, flat_max=0)
