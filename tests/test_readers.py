"""Readers you can trust: pinned reads, kept versions, verified files, one-line damage reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpora import write_clip, write_photo
from test_ann import clustered

from unite_search import Index, ann
from unite_search import manifest as manifests
from unite_search.cli import main
from unite_search.errors import IndexDamagedError, StaleReadError
from unite_search.ingestion import ingest
from unite_search.reader import Snapshot
from unite_search.schema import row_key
from unite_search.store import IndexStore
from unite_search.verify import verify


def _photos(root: Path, seeds) -> None:
    for seed in seeds:
        write_photo(root / f"p{seed}.png", seed=seed)


@pytest.fixture
def grown(tmp_path, encoder):
    """An index of 4 photos, and an Index opened on it before 3 more were added and published."""
    root = tmp_path / "corpus"
    _photos(root, range(4))
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    early = Index.open(index, encoder=encoder)  # nothing loaded yet: no FAISS file, no table, no metadata
    first = IndexStore(index).require_manifest()
    _photos(root, range(10, 13))
    (root / "p0.png").unlink()
    ingest(root, index, encoder=encoder)
    return root, index, early, first


def test_a_reader_opened_before_a_publish_reads_only_its_own_state(grown, encoder):
    root, _, early, first = grown
    hits = early.query(image=root / "p1.png", k=100)
    assert len(hits) == 4  # the 4 photos it was opened on, p0 included, nothing of the new state
    assert {h.path for h in hits} == {"p0.png", "p1.png", "p2.png", "p3.png"}
    assert early.manifest["serial"] == first["serial"]
    early.refresh()  # the whole snapshot swaps at once
    hits = early.query(image=root / "p1.png", k=100)
    assert {h.path for h in hits} == {"p1.png", "p2.png", "p3.png", "p10.png", "p11.png", "p12.png"}


def test_the_previous_state_stays_readable_and_older_ones_are_pruned(grown, encoder, monkeypatch):
    root, index, early, first = grown
    second = IndexStore(index).require_manifest()
    assert (index / first["shards"]["image"]["faiss"]).is_file()  # the previous state's file is kept
    assert second["history"][0]["shards"]["image"]["version"] == first["shards"]["image"]["version"]
    monkeypatch.setattr(manifests, "KEEP_RECENT_SECONDS", 0)  # only the current and previous states
    _photos(root, [20])
    ingest(root, index, encoder=encoder)
    assert not (index / first["shards"]["image"]["faiss"]).exists()  # two publishes later: pruned
    assert (index / second["shards"]["image"]["faiss"]).is_file()
    with pytest.raises(StaleReadError, match=r"call Index.refresh\(\)"):
        early.query(image=root / "p1.png")
    early.refresh()
    assert len(early.query(image=root / "p1.png", k=100)) == 7
    assert not verify(index).damaged


FAKETIME = shutil.which("faketime")
LATER_SCRIPT = """
import os, sys, time
from unite_search import Encoder
from unite_search.ingestion import ingest
encoder = Encoder.load(sys.argv[1], device="cpu", workers=1)
for days in sys.argv[4:]:
    os.environ["FAKETIME"] = f"+{days}d"  # read again at every clock call (FAKETIME_NO_CACHE)
    if sys.stdin.readline() != "go\\n":  # the test has put this run's files in place
        sys.exit(1)
    ingest(sys.argv[2], sys.argv[3], encoder=encoder)
    print(f"done {time.time() - int(days) * 86400:.0f}", flush=True)  # the real time, if the clock moved
"""


@pytest.mark.skipif(FAKETIME is None, reason="needs faketime (apt-get install faketime) to age the index")
def test_a_published_version_survives_later_runs_days_apart(tmp_path, tiny_dir, encoder):
    """LanceDB's own optimize() drops versions older than 7 days, published or not."""
    root = tmp_path / "corpus"
    _photos(root, range(3))
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    v1 = IndexStore(index).require_manifest()
    # one process for both later runs (8 and 16 days on), told when to start each
    env = {**os.environ, "LANCEDB_LOG": "error", "FAKETIME_NO_CACHE": "1"}
    cmd = [FAKETIME, "+8 days", sys.executable, "-c", LATER_SCRIPT, str(tiny_dir), str(root), str(index), "8", "16"]
    runs = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def later(seed: int) -> dict:
        _photos(root, [seed])
        runs.stdin.write("go\n")
        runs.stdin.flush()
        said = runs.stdout.readline().split()
        assert said[:1] == ["done"], runs.wait(timeout=60)
        assert abs(float(said[1]) - time.time()) < 60  # its clock was that many days on
        return IndexStore(index).require_manifest()

    try:
        v2 = later(10)  # 8 days on: v1 is the previous state and must stay readable
        tables = IndexStore(index).tables
        assert tables.open("image", v1["shards"]["image"]["version"]).count_rows() == 3
        assert (index / v1["shards"]["image"]["faiss"]).is_file()
        later(11)  # 16 days on: v2 is the previous state, v1 is pruned explicitly
        assert tables.open("image", v2["shards"]["image"]["version"]).count_rows() == 4
        with pytest.raises(ValueError, match="no longer exists"):  # LanceDB's error for a cleaned-up version
            tables.open("image", v1["shards"]["image"]["version"]).count_rows()
        assert not (index / v1["shards"]["image"]["faiss"]).exists()
    finally:
        runs.stdin.close()
        code = runs.wait(timeout=300)
    assert code == 0
    assert not verify(index).damaged


# --------------------------------------------------------------------------------------- integrity
@pytest.fixture
def built(tmp_path, encoder):
    root = tmp_path / "corpus"
    _photos(root, range(3))
    for i in range(3):
        write_clip(root / f"clip{i}.mp4", 8, fps=4, seed=i)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    return root, index


def _overwrite(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(data)


def _entry(index: Path, shard: str) -> dict:
    return IndexStore(index).require_manifest()["shards"][shard]


@pytest.mark.parametrize(
    "damage", ["vector bytes", "vector bytes, mtime restored", "id map", "truncated", "deleted", "other shard's file"]
)
def test_a_damaged_faiss_file_is_an_error_and_ingest_rebuilds_it(built, encoder, damage):
    root, index = built
    expected = [(h.id, round(h.score, 5)) for h in Index.open(index, encoder=encoder).query(image=root / "p1.png")]
    path = index / _entry(index, "image")["faiss"]
    size = path.stat().st_size
    if damage.startswith("vector bytes"):
        st = path.stat()
        _overwrite(path, size // 2, np.full(8, 1e37, np.float32).tobytes())
        if damage.endswith("restored"):  # ingest's cheap stat check must still see it (ctime moved)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "id map":
        _overwrite(path, size - 24, np.arange(3, dtype=np.int64).tobytes())
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: size // 2])
    elif damage == "deleted":
        path.unlink()
    else:
        shutil.copy(index / _entry(index, "video")["faiss"], path)
    with pytest.raises(IndexDamagedError, match=r"unite-search ingest") as info:
        Index.open(index, encoder=encoder).query(image=root / "p1.png")
    assert "\n" not in str(info.value) and ("faiss" in str(info.value))
    assert verify(index).damaged
    report = ingest(root, index, encoder=encoder)
    assert report.repaired == ["image"] and report.encoded_items == 0
    got = [(h.id, round(h.score, 5)) for h in Index.open(index, encoder=encoder).query(image=root / "p1.png")]
    assert got == expected
    assert not verify(index).damaged


def test_a_hit_without_its_row_is_an_error_not_a_silent_drop(built, encoder):
    """Pairing another shard's (checksummed) FAISS file with this table: every hit is unknown to it."""
    root, index = built
    store = IndexStore(index)
    manifest = store.require_manifest()
    image, video = manifest["shards"]["image"], manifest["shards"]["video"]
    assert image["rows"] == video["rows"] == 3
    for key in ("faiss", "faiss_bytes", "faiss_sha256", "index"):
        image[key] = video[key]
    manifests.write(index, manifest)
    with pytest.raises(IndexDamagedError, match="does not hold"):
        Index.open(index, encoder=encoder).query(image=root / "p1.png")


def test_verify_checks_every_file_the_manifest_names(built):
    _, index = built
    runner = CliRunner()
    ok = runner.invoke(main, ["info", str(index), "--verify"])
    assert ok.exit_code == 0 and "index verified" in ok.output and ok.output.count("ok ") == 2
    data = sorted((index / "tables/video.lance/data").iterdir())[0]
    data.unlink()  # a data file of the published video version
    manifest = IndexStore(index).require_manifest()
    manifest["shards"]["image"]["rows"] = 4  # a row count that disagrees with the table and FAISS
    manifests.write(index, manifest)
    bad = runner.invoke(main, ["info", str(index), "--verify", "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    problems = report["problems"]
    assert report["damaged"] and len(problems) == 3, problems
    assert any("shard video" in p and "unreadable (Not found" in p and ".rs:" not in p for p in problems)
    assert any("faiss/image" in p and "manifest says 4" in p for p in problems)
    assert any("shard image table" in p and "3 rows, the manifest says 4" in p for p in problems)


def test_verify_finds_a_table_file_whose_bytes_changed(built):
    """A path in a data file changed in place: LanceDB reads it without a word, the recorded sha256 does not."""
    _, index = built
    entry = _entry(index, "image")
    rel = next(r for r in entry["lance_files"] if r.startswith("data/"))
    path = index / "tables/image.lance" / rel
    raw = path.read_bytes()
    assert raw.count(b"p1.png") == 2  # the path and paths columns
    path.write_bytes(raw.replace(b"p1.png", b"p7.png"))
    assert IndexStore(index).read_rows("image", ["path"]).column("path").to_pylist().count("p7.png") == 1
    said = f"{rel} has other bytes than when it was published (sha256 differs)"
    assert verify(index).problems == [f"shard image table version {entry['version']}: {said}"]


def test_damage_gives_one_line_errors_on_the_command_line(built):
    _, index = built
    runner = CliRunner()
    path = index / _entry(index, "image")["faiss"]
    whole = path.read_bytes()
    path.write_bytes(whole[:100])
    out = runner.invoke(main, ["query", str(index), "--like", _row_id(index, "image"), "--target", "image"])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "the manifest records" in out.output
    path.write_bytes(whole)  # like= reads the image row's vector from this file: mend it for the next case
    data = sorted((index / "tables/video.lance/data").iterdir())[0]
    data.unlink()
    out = runner.invoke(main, ["query", str(index), "--like", _row_id(index, "image"), "--target", "video"])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "missing or unreadable" in out.output
    (index / "manifest.json").write_text('{"format": 2, "shards"')
    out = runner.invoke(main, ["query", str(index), "--text", "x"])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "unreadable manifest" in out.output


def _row_id(index: Path, shard: str) -> str:
    return IndexStore(index).read_rows(shard, ["id"]).column("id")[0].as_py()


def test_a_format_1_index_is_refused_by_readers_until_ingest_adds_checksums(built, encoder):
    root, index = built
    manifest = IndexStore(index).require_manifest()
    manifest["format"] = 1
    for entry in manifest["shards"].values():
        for key in ("faiss_bytes", "faiss_sha256", "dim"):
            entry.pop(key)
    manifests.write(index, manifest)
    with pytest.raises(IndexDamagedError, match="no recorded checksum"):
        Index.open(index, encoder=encoder).query(image=root / "p1.png")
    report = ingest(root, index, encoder=encoder)
    assert report.repaired == ["image", "video"] and report.encoded_items == 0
    upgraded = IndexStore(index).require_manifest()
    assert upgraded["format"] == 2 and all("faiss_sha256" in e for e in upgraded["shards"].values())
    assert Index.open(index, encoder=encoder).query(image=root / "p1.png")[0].path == "p1.png"


def test_a_rerun_hashes_no_unchanged_faiss_file_and_damage_is_not_a_bad_filter(built, encoder, monkeypatch):
    import unite_search.diskio as diskio

    root, index = built
    hashed = []
    real = diskio.file_sha256
    monkeypatch.setattr(diskio, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    assert not ingest(root, index, encoder=encoder).published
    assert not [name for name in hashed if name.endswith(".faiss")]  # unchanged since written: trusted
    monkeypatch.undo()
    sorted((index / "tables/image.lance/data").iterdir())[0].unlink()
    with pytest.raises(IndexDamagedError, match="missing or unreadable"):
        Index.open(index, encoder=encoder).query(image=root / "p1.png", where="width > 0")


# ------------------------------------------------------------------ files named outside the index
def _text_store(folder: Path, n: int, flat_max: int):
    """An index of ``n`` clustered vectors in one published ``text`` shard (IVF past ``flat_max`` rows)."""
    store = IndexStore(folder)
    manifest = store.init({"dim": 32, "model_id": "m", "revision": "r"}, {}, "/corpus")
    vecs = clustered(n)
    store.tables.add_rows("text", _rows([f"r{i}" for i in range(n)]), vecs)
    return store, store.publish(manifest, ["text"], flat_max=flat_max), vecs


def _rows(names) -> list[dict]:
    return [{"id": n, "key": row_key(n), "unit": f"u-{n}", "unit_rows": 1, "modality": "text"} for n in names]


@pytest.mark.parametrize("how", ["../ path", "absolute path", "symlink", "delta part"])
def test_a_faiss_file_named_outside_the_index_is_damage_and_never_read(tmp_path, how):
    store, manifest, vecs = _text_store(tmp_path / "index", 2500 if how == "delta part" else 300, flat_max=1000)
    if how == "delta part":
        store.tables.add_rows("text", _rows(["extra"]), clustered(1, noise_seed=7))
        manifest = store.publish(manifest, ["text"], flat_max=1000)
    entry = manifest["shards"]["text"]
    part = entry["delta"] if how == "delta part" else entry
    outside = tmp_path / "outside.faiss"
    shutil.move(store.path / part["faiss"], outside)  # a sound file, with the recorded size and sha256
    if how == "symlink":
        os.symlink(outside, store.path / part["faiss"])
    else:
        part["faiss"] = str(outside) if how == "absolute path" else "../outside.faiss"
        manifests.write(store.path, manifest)
    read = []
    real_read = ann.read
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ann, "read", lambda path, **kw: read.append(Path(path).name) or real_read(path, **kw))
        with pytest.raises(IndexDamagedError, match=r"faiss/ folder; run `unite-search ingest`") as info:
            Snapshot.open(store.path).readers["text"].search(vecs[3], 1, allowed=None, excluded=set())
        problems = verify(store.path).problems
    assert "outside.faiss" not in read  # neither the reader nor verify opened it
    assert str(outside.stat().st_size) not in str(info.value)
    assert len(problems) == 1 and "shard text" in problems[0] and "faiss/ folder" in problems[0], problems
    why = store.needs_repair(manifest)
    assert list(why) == ["text"] and "faiss/ folder" in why["text"]
    repaired = store.publish(manifest, ["text"], flat_max=1000)  # what ingest does with it: a full build
    assert repaired["shards"]["text"]["index"]["built"] == "full"
    hits = Snapshot.open(store.path).readers["text"].search(vecs[3], 1, allowed=None, excluded=set())
    assert hits[0][0] == row_key("r3") and not store.needs_repair(repaired)


@pytest.mark.parametrize("delta", [False, True])
def test_many_excluded_ids_of_other_shards_leave_k_hits(tmp_path, delta):
    """The query layer excludes the same ids in every shard: only those a shard holds count against its k."""
    store, manifest, vecs = _text_store(tmp_path / "index", 2500, flat_max=1000)
    if delta:  # 100 rows in a delta index beside the base
        store.tables.add_rows("text", _rows([f"d{i}" for i in range(100)]), clustered(100, noise_seed=3))
        manifest = store.publish(manifest, ["text"], flat_max=1000)
        assert "delta" in manifest["shards"]["text"]
    assert manifest["shards"]["text"]["index"]["type"] == "ivf"
    reader = Snapshot.open(store.path).readers["text"]
    n = reader.rows
    foreign = {row_key(f"other-shard-{i}") for i in range(2400)}
    own = {row_key(f"r{i}") for i in range(0, 2500, 50)} | (
        {row_key(f"d{i}") for i in range(0, 100, 10)} if delta else set()
    )
    for k in (400, n):
        hits = reader.search(vecs[0], k, allowed=None, excluded=foreign | own)
        assert len(hits) == min(k, n - len(own)), (k, len(hits))
        assert not {key for key, _ in hits} & own


def test_a_manifest_edited_out_of_shape_is_damage_in_one_line(tmp_path, tiny_dir):
    """A manifest whose sections are not of the kinds every version writes raised KeyError, AttributeError or
    TypeError, and settings no image can be prepared under (a trillion pixels) ran out of memory on a query."""
    from unite_search import ConfigError, EncoderSettings

    root, index = tmp_path / "corpus", tmp_path / "index"
    _photos(root, range(2))
    ingest(root, index, model=str(tiny_dir), device="cpu")
    good = json.loads((index / "manifest.json").read_text())
    edits = {
        "shard entry a list": lambda m: m["shards"].update(image=[1, 2]),
        "shard entry without faiss": lambda m: m["shards"]["image"].pop("faiss"),
        "no encoder section": lambda m: m.pop("encoder"),
        "delta part a string": lambda m: m["shards"]["image"].update(delta="x"),
    }
    for name, edit in edits.items():
        manifest = json.loads(json.dumps(good))
        edit(manifest)
        (index / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(IndexDamagedError, match="edited or damaged"):
            Index.open(index, device="cpu")
        result = CliRunner().invoke(main, ["info", str(index)])
        assert result.exit_code == 1 and "edited or damaged" in result.output and "Traceback" not in result.output, name
    for key, value, said in [("min_pixels", 10**12, "at most"), ("max_pixels", 10**12, "at most"),
                             ("min_frames", "4", "whole number")]:  # fmt: skip
        manifest = json.loads(json.dumps(good))
        manifest["encoder"][key] = value
        (index / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(IndexDamagedError, match=f"encoder settings are invalid .*{said}"):
            Index.open(index, device="cpu").query(text="x")
        with pytest.raises(ConfigError, match=said):
            EncoderSettings(**{key: value})
    given = EncoderSettings(frames=np.int64(8), fps=np.float32(0.5), max_pixels=np.int32(200_704))  # numpy's own
    assert json.loads(json.dumps(given.to_dict()))["frames"] == 8 and given.fps == 0.5


def _held_shard(tmp_path, shard, n, fill, batch, monkeypatch):
    """A published shard of ``n`` rows, ``fill(i)`` giving row i's text, caption, metadata or other columns;
    readers read it in batches of ``batch`` rows. Returns (store, manifest, stored rows in table order)."""
    import unite_search.reader as readers

    monkeypatch.setattr(readers, "READ_BATCH", batch)
    store = IndexStore(tmp_path / "index")
    manifest = store.init({"dim": 16, "model_id": "m", "revision": "r"}, {}, "/corpus")
    rows = []
    for i in range(n):
        path = f"photos/trip-{i % 7}/IMG_{i:05d}.jpg"
        rows.append({"id": f"r{i}", "key": row_key(f"r{i}"), "unit": f"u{i // 2}", "unit_rows": 2, "modality": shard,
                     "source": "file", "path": path, "paths": [path] + [f"copy/{i}.jpg"] * (i % 3 == 0),
                     "content_hash": f"{i // 2:064x}", "size": 1000 + i, "mtime": 1.5e9 + i / 3,
                     "width": 640 + i % 5, "height": None if i % 4 else 480, **fill(i)})  # fmt: skip
    store.tables.add_rows(shard, rows, clustered(n, dim=16))
    manifest = store.publish(manifest, [shard], flat_max=100_000)
    stored = store.tables.read(shard, manifest["shards"][shard]["version"])
    assert stored.column("id").to_pylist() == [r["id"] for r in rows]  # the table keeps the written order
    return store, manifest, [{c: r[c] for c in stored.column_names if c != "vector"} for r in stored.to_pylist()]


def test_a_held_reader_keeps_lancedbs_batches_and_returns_rows_as_stored(tmp_path, monkeypatch):
    """A reader of a small shard holds its columns as the batches LanceDB read, not merged into one table:
    the merge copied them into pyarrow's pool, so a load peaked at twice the held size. Rows spread over
    many batches come back as stored, in the order asked, large columns fetched only where a row has one."""
    import pyarrow as pa

    def fill(i):  # content hashes: some null, some short, all others sharing their first 8 bytes
        odd = {7: None, 9: "ab", 11: "ab", 13: "0000000"}.get(i % 50, f"{i // 2:064x}")
        return {"caption": f"caption {i}" if i % 37 == 0 else None, "content_hash": odd,
                "metadata": json.dumps({"n": i}) if i % 101 == 0 else None}  # fmt: skip

    store, _, stored = _held_shard(tmp_path, "image", 1200, fill, 100, monkeypatch)
    by_key = {r["key"]: r for r in stored}
    reader = Snapshot.open(store.path).readers["image"]
    pool = pa.total_allocated_bytes()
    meta = reader.meta()
    assert pa.total_allocated_bytes() - pool < meta.table.nbytes / 4  # no copy of the rows into pyarrow's pool
    assert len(meta.table.batches) > 5 and meta.table.nbytes > 100_000
    assert meta.fetch == ("caption", "metadata")  # text is null throughout: never fetched
    large = {r["key"] for r in stored if r["caption"] is not None or r["metadata"] is not None}
    assert set(np.flatnonzero(meta.large).tolist()) == set(reader.offsets(sorted(large)).tolist())
    fetched = []
    take = reader._take
    monkeypatch.setattr(reader, "_take", lambda offsets, columns: fetched.append(offsets) or take(offsets, columns))
    rng = np.random.default_rng(5)
    asks = [[stored[i]["key"] for i in rng.choice(len(stored), 10, replace=False)] for _ in range(30)]
    asks += [[stored[5]["key"], stored[1100]["key"], stored[5]["key"]], [stored[3]["key"]], [stored[0]["key"]]]
    for asked in asks:
        got = reader.rows_of(asked)
        assert list(got) == list(dict.fromkeys(asked)) and got == {k: by_key[k] for k in asked}
        assert all(list(row) == list(stored[0]) for row in got.values())  # in table column order
    assert fetched and all(stored[o]["key"] in large for offsets in fetched for o in offsets)  # offset = table order
    monkeypatch.delattr(pa, "concat_batches", raising=False)  # pyarrow before 19 joins the rows another way
    assert all(reader.rows_of(asked) == {k: by_key[k] for k in asked} for asked in asks)
    for value in [stored[i]["content_hash"] for i in (0, 1, 599, 1199, 9, 13)]:
        want = {r["key"] for r in stored if r["content_hash"] == value}
        assert reader.keys_with_hash(value) == want and len(want) >= 2
    assert reader.keys_with_hash("f" * 64) == reader.keys_with_hash("a") == reader.keys_with_hash("") == set()
    assert reader.keys_with_hash("0" * 8) == set() and reader.keys_with_hash("ab\0") == set()


def test_loading_a_text_shard_reads_no_text(tmp_path, monkeypatch):
    """Which hits have text to fetch was found with ``text IS NOT NULL`` over every row, which read all of
    a text shard's text (1-2 s and ~170 MB at 1M rows). A column a sample shows most rows fill is now
    fetched for every hit instead; the load reads no more of it than the sample."""
    import re

    store, _, stored = _held_shard(tmp_path, "text", 600, lambda i: {"text": f"passage {i} " * 40}, 100, monkeypatch)
    reader = Snapshot.open(store.path).readers["text"]
    table = reader.table()
    asked = []

    class Query:
        def __init__(self, query):
            self.query = query

        def __getattr__(self, name):
            if name not in ("select", "where"):
                return getattr(self.query, name)
            return lambda arg, *a, **k: asked.append(arg) or Query(getattr(self.query, name)(arg, *a, **k))

    class Table:
        def __getattr__(self, name):
            return getattr(table, name)

        def search(self, *a, **k):
            return Query(table.search(*a, **k))

    reader.table = Table
    meta = reader.meta()
    assert not [a for a in asked if re.search(r"\btext\b", str(a))], asked
    assert len(asked) >= 3  # the small columns; a filter on caption, one on metadata (both null throughout)
    assert meta.fetch == ("text",) and meta.large.all()
    keys = [r["key"] for r in stored[::50]]
    assert reader.rows_of(keys) == {r["key"]: r for r in stored[::50]}


@pytest.mark.parametrize("where", ["sampled rows", "rows between them"])
def test_a_sample_that_misjudges_a_column_changes_no_row(tmp_path, monkeypatch, where):
    """A column filled only in the sampled rows looks dense, so every hit fetches it; one filled only
    between them is found by a filter. Either way each row is returned as stored."""
    import unite_search.held as held

    monkeypatch.setattr(held, "SAMPLE", 3)  # rows 0, 149 and 299 of 300
    filled = {0, 149, 299} if where == "sampled rows" else set(range(10, 20))
    fill = lambda i: {"caption": f"caption {i}" if i in filled else None}  # noqa: E731
    store, _, stored = _held_shard(tmp_path, "image", 300, fill, 64, monkeypatch)
    reader = Snapshot.open(store.path).readers["image"]
    meta = reader.meta()
    assert meta.fetch == ("caption",)
    assert np.flatnonzero(meta.large).tolist() == (list(range(300)) if where == "sampled rows" else sorted(filled))
    for start in range(0, 300, 25):
        part = stored[start : start + 25]
        assert reader.rows_of([r["key"] for r in part]) == {r["key"]: r for r in part}


def test_the_first_bytes_of_each_value_are_read_right_up_to_the_buffers_end():
    """keys_with_hash compares each row's first 8 bytes before the whole value: read in place from
    pyarrow's buffer, zero-padded, near its end too, in a sliced array as in a whole one."""
    import pyarrow as pa

    from unite_search.held import _first_bytes

    values = ["0123456789abcdef", None, "", "ab", "é€ü", "12345678", "x" * 9, "ab\0", None, "z", "q"]
    for array in (pa.array(values, pa.string()), pa.array(["pad", *values], pa.string()).slice(1)):
        want = [0 if v is None else int.from_bytes(v.encode()[:8].ljust(8, b"\0"), "little") for v in values]
        assert _first_bytes(array).tolist() == want
    assert _first_bytes(pa.array([None, ""], pa.string())).tolist() == [0, 0]
