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
