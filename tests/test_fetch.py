"""A reader of a shard too large to hold its columns fetches its hits' rows from the pinned table version:
through the Lance dataset where pylance reads it, through LanceDB where it does not, never from another
version, and a damaged data file is an error."""

import pytest
from test_ann import clustered

import unite_search.reader as readers
from unite_search.errors import IndexDamagedError
from unite_search.reader import Snapshot
from unite_search.schema import row_key
from unite_search.store import IndexStore


def rows_for(names, text):
    return [
        {"id": n, "key": row_key(n), "unit": f"u-{n}", "unit_rows": 1, "modality": "text", "text": f"{text} {n}",
         "path": f"notes/{n}.txt", "size": i}
        for i, n in enumerate(names)
    ]  # fmt: skip


@pytest.fixture
def fetching(tmp_path, monkeypatch):
    """A published shard of 300 rows whose readers hold only a key map (MEMORY_ROWS = 0)."""
    monkeypatch.setattr(readers, "MEMORY_ROWS", 0)
    store = IndexStore(tmp_path / "index")
    manifest = store.init({"dim": 16, "model_id": "m", "revision": "r"}, {}, "/corpus")
    names = [f"r{i}" for i in range(300)]
    store.tables.add_rows("text", rows_for(names, "first"), clustered(300, dim=16))
    manifest = store.publish(manifest, ["text"], flat_max=100_000)
    return store, manifest, names


def test_a_fetching_reader_reads_its_own_version_through_the_lance_dataset(fetching):
    store, manifest, names = fetching
    old = Snapshot.open(store.path).readers["text"]
    keys = [row_key(n) for n in names[:10]]
    assert old.meta().table is None  # nothing but the key map held
    # the same ids rewritten with other text: a new table version and a new publish
    store.tables.delete_units("text", [f"u-{n}" for n in names[:10]])
    store.tables.add_rows("text", rows_for(names[:10], "second"), clustered(10, dim=16, seed=3))
    store.publish(manifest, ["text"], flat_max=100_000)
    # the old reader opens its dataset now, after the table moved on: at its own version
    assert [r["text"] for r in old.rows_of(keys).values()] == [f"first {n}" for n in names[:10]]
    dataset = old._lance()
    assert dataset is not None and dataset.version == manifest["shards"]["text"]["version"]
    new = Snapshot.open(store.path).readers["text"]
    got = new.rows_of(keys)
    assert [r["text"] for r in got.values()] == [f"second {n}" for n in names[:10]]
    assert {r["path"] for r in got.values()} == {f"notes/{n}.txt" for n in names[:10]}


def test_a_dataset_that_cannot_read_the_table_falls_back_to_lancedb(fetching):
    store, _, names = fetching
    keys = [row_key(n) for n in names[5:25]]
    expected = Snapshot.open(store.path).readers["text"].rows_of(keys)

    class Unreadable:
        def take(self, *args, **kwargs):
            raise OSError("unsupported file version")

    reader = Snapshot.open(store.path).readers["text"]
    reader._dataset = Unreadable()
    assert reader.rows_of(keys) == expected
    assert reader._dataset is False and reader._lance() is None  # LanceDB from then on


def test_a_damaged_data_file_is_an_error_when_fetching(fetching):
    store, _, names = fetching
    reader = Snapshot.open(store.path).readers["text"]
    reader.meta()  # the key map is loaded; the data files are damaged after
    files = sorted((store.path / "tables").glob("*.lance/data/*.lance"))
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(IndexDamagedError, match="rows of table version"):
        reader.rows_of([row_key(n) for n in names[:10]])


def test_columns_of_one_value_are_filled_in_not_fetched(fetching, monkeypatch):
    store, _, names = fetching
    keys = [row_key(n) for n in names[40:60]]
    reader = Snapshot.open(store.path).readers["text"]
    same = reader.meta().same
    assert same["modality"] == "text" and same["unit_rows"] == 1 and same["width"] is None
    assert "size" not in same and "path" not in same
    asked = []
    take = reader._take
    monkeypatch.setattr(reader, "_take", lambda offsets, columns: asked.append(columns) or take(offsets, columns))
    got = reader.rows_of(keys)
    assert asked and "modality" not in asked[0] and {"size", "text", "path"} <= set(asked[0])
    monkeypatch.setattr(readers, "MEMORY_ROWS", 1_000_000)
    assert got == Snapshot.open(store.path).readers["text"].rows_of(keys)  # as a reader holding the columns


def test_a_column_of_one_value_in_the_first_batches_only_is_fetched(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MEMORY_ROWS", 0)
    monkeypatch.setattr(readers, "READ_BATCH", 100)
    store = IndexStore(tmp_path / "index")
    manifest = store.init({"dim": 16, "model_id": "m", "revision": "r"}, {}, "/corpus")
    names = [f"r{i}" for i in range(300)]
    rows = [{**row, "mtime": 1.0 if i < 250 else 2.0} for i, row in enumerate(rows_for(names, "t"))]
    store.tables.add_rows("text", rows, clustered(300, dim=16))
    store.publish(manifest, ["text"], flat_max=100_000)
    reader = Snapshot.open(store.path).readers["text"]
    assert "mtime" not in reader.meta().same and "modality" in reader.meta().same
    got = reader.rows_of([row_key(n) for n in names[245:255]])
    assert [r["mtime"] for r in got.values()] == [1.0] * 5 + [2.0] * 5
