"""Writes: a no-op rerun publishes nothing; a full disk or a read-only index is one clear line, never damage.

The disk-full and read-only cases run the real command line in a private mount namespace
(``unshare -m``) on a small tmpfs or a read-only bind mount, so the operating system itself refuses
the writes; they skip where the machine does not allow mount namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from corpora import write_photo

from unite_search.ingestion import ingest
from unite_search.store import IndexStore


def test_a_rerun_with_a_file_that_keeps_failing_publishes_nothing(tmp_path, encoder):
    root = tmp_path / "corpus"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    whole = write_photo(tmp_path / "whole.jpg", seed=5, size=(300, 200))
    (root / "truncated.jpg").write_bytes(whole.read_bytes()[:2000])  # passes the read stage, fails at decode
    (root / "notes.txt").write_text("a short note")
    index = tmp_path / "index"
    first = ingest(root, index, encoder=encoder)
    assert first.status == "finished_with_failures" and first.published
    assert [p.stage for p in first.failures] == ["decode"]
    store = IndexStore(index)
    versions = {name: store.tables.open(name).version for name in store.tables.names()}  # files table too
    manifest = (index / "manifest.json").read_bytes()
    again = ingest(root, index, encoder=encoder)
    assert again.status == "finished_with_failures" and [p.path for p in again.failures] == ["truncated.jpg"]
    assert not again.published
    assert {name: store.tables.open(name).version for name in store.tables.names()} == versions
    assert (index / "manifest.json").read_bytes() == manifest


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d"
        return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -m and mount (root in a sandbox)")


# Runs inside the mount namespace: one process, the real command line through click's runner.
DRIVER = """
import json, os, shutil, subprocess, sys
from pathlib import Path
from click.testing import CliRunner
from unite_search.cli import main

spec = json.loads(sys.argv[1])
mnt, idx = Path(spec["mnt"]), Path(spec["mnt"]) / "idx"
runner = CliRunner()

def cli(*args):
    r = runner.invoke(main, [str(a) for a in args])
    return {"rc": r.exit_code, "out": r.stdout, "err": r.stderr}

ingest = ["ingest", spec["root"], "--index", idx, "--model", spec["model"], "--device", "cpu"]
query = ["query", idx, "--text", "sea", "--target", "image", "-k", "20", "--json"]
out = {}
if spec["case"] == "full":
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    out["first"] = cli(*ingest, "-q")
    with open(mnt / "filler", "wb", buffering=0) as fh:  # fill the disk
        try:
            while True:
                fh.write(bytes(4096))
        except OSError:
            pass
    for png in Path(spec["extra"]).iterdir():
        shutil.copy(png, spec["root"])
    out["full"] = cli(*ingest)
    out["leftover"] = [str(p) for p in mnt.rglob("*.tmp-*")]
    out["query"] = cli(*query)
    os.remove(mnt / "filler")
    out["after"] = cli(*ingest, "-q")
    out["after_query"] = cli(*query)
    out["verify"] = cli("info", idx, "--verify")
else:
    subprocess.run(["mount", "--bind", "-o", "ro", str(idx), str(idx)], check=True)
    out["ingest"] = cli(*ingest, "-q")
    out["query"] = cli(*query)
    out["verify"] = cli("info", idx, "--verify")
    out["leftover"] = [str(p) for p in idx.rglob("*.tmp-*")]
print(json.dumps(out))
"""


def _in_namespace(spec: dict) -> dict:
    env = {**os.environ, "LANCEDB_LOG": "error"}
    cmd = ["unshare", "-m", sys.executable, "-c", DRIVER, json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _error_line(result: dict) -> str:
    """The command's last stderr line, after checking it failed with status 1 and no traceback."""
    assert result["rc"] == 1, result
    assert "Traceback" not in result["err"] + result["out"]
    return result["err"].strip().splitlines()[-1]


@needs_mounts
def test_a_full_disk_is_one_line_and_the_published_state_stays(tmp_path, tiny_dir):
    root, extra, mnt = tmp_path / "corpus", tmp_path / "extra", tmp_path / "mnt"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    for i in range(8):
        write_photo(extra / f"new{i}.png", seed=10 + i, size=(120, 90))
    (root / "notes.txt").write_text("a note about the sea " * 200)
    mnt.mkdir()
    out = _in_namespace({"case": "full", "root": str(root), "extra": str(extra), "mnt": str(mnt),
                         "model": str(tiny_dir)})  # fmt: skip
    assert out["first"]["rc"] == 0, out["first"]
    line = _error_line(out["full"])
    assert line.startswith("Error: cannot write the index at ") and "No space left on device" in line, line
    assert str(mnt / "idx") in line and "published state is unchanged" in line
    assert "could not write the run report" in out["full"]["err"]  # said, without hiding the cause
    assert out["leftover"] == []
    hits = json.loads(out["query"]["out"])["hits"]
    assert sorted(h["path"] for h in hits) == ["p0.png", "p1.png", "p2.png"]  # the published state, intact
    assert out["after"]["rc"] == 0, out["after"]  # with space again, the rerun finishes the job
    assert len(json.loads(out["after_query"]["out"])["hits"]) == 11
    assert out["verify"]["rc"] == 0, out["verify"]


@needs_mounts
def test_a_read_only_index_can_be_searched_and_refuses_writes_in_one_line(tmp_path, tiny_dir, encoder):
    root, mnt = tmp_path / "corpus", tmp_path / "mnt"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    ingest(root, mnt / "idx", encoder=encoder)
    write_photo(root / "new.png", seed=9)
    out = _in_namespace({"case": "read-only", "root": str(root), "mnt": str(mnt), "model": str(tiny_dir)})
    line = _error_line(out["ingest"])
    assert line.count("Error:") == 1 and "Read-only file system" in line and str(mnt / "idx") in line, line
    assert out["ingest"]["err"].strip() == line  # nothing but the one line
    assert len(json.loads(out["query"]["out"])["hits"]) == 3
    assert out["verify"]["rc"] == 0
    assert out["leftover"] == []


def test_relabel_delete_and_keys_of_many_units_span_filters_and_commits(tmp_path, monkeypatch):
    """Units are named 50,000 to a filter (500 made a mass move or delete cost the table's size times the
    changes); here 3 to a filter and 4 rows to a relabelling commit, so that every path crosses its bounds."""
    import numpy as np

    from unite_search import tables as tables_module
    from unite_search.tables import ShardTables

    monkeypatch.setattr(tables_module, "RELABEL_ROWS", 4)
    tables = ShardTables(tmp_path / "tables")
    rows = [{"id": f"u{u}#{r}", "key": 10 * u + r, "unit": f"u{u}", "unit_rows": 2, "modality": "text",
             "source": f"a.jsonl:{u}", "path": f"old{u}", "paths": [f"old{u}"], "caption": None}
            for u in range(10) for r in range(2)]  # fmt: skip
    vectors = np.arange(20 * 4, dtype=np.float32).reshape(20, 4)
    tables.add_rows("text", rows, vectors)
    moved = {f"u{u}": ((f"new{u}", f"also{u}"), f"caption {u}") for u in range(7)}
    moved["u7"] = ((f"new{7}",), None, "b.jsonl:1")  # a new source too
    before = tables.open("text").version
    tables.relabel("text", moved, chunk=3)
    assert tables.open("text").version - before == 5  # units 0-2, 3-5, 6-7: 6 + 6 + 4 rows, 4 to a commit
    after = {r["id"]: r for r in tables.open("text").search().limit(None).to_arrow().to_pylist()}
    for row, vector in zip(rows, vectors, strict=True):
        got, change = after[row["id"]], moved.get(row["unit"])
        assert got["vector"] == vector.tolist() and got["key"] == row["key"]
        if change is None:
            assert (got["path"], got["paths"], got["caption"], got["source"]) == (row["path"], row["paths"], None,
                                                                                  row["source"])  # fmt: skip
        else:
            assert (got["path"], got["paths"], got["caption"]) == (change[0][0], list(change[0]), change[1])
            assert got["source"] == (change[2] if len(change) == 3 else row["source"])
    units = [f"u{u}" for u in (1, 4, 8, 9)] + ["none"]
    assert sorted(tables.unit_keys("text", units, chunk=3).tolist()) == [10, 11, 40, 41, 80, 81, 90, 91]
    assert tables.delete_units("text", units, chunk=3) == 8
    assert sorted(r["unit"] for r in tables.open("text").search().limit(None).to_arrow().to_pylist()) == sorted(
        2 * [f"u{u}" for u in (0, 2, 3, 5, 6, 7)]
    )
