"""Ingest of messy folders: what cannot be looked at is not gone, and one bad manifest line is that line's
problem."""

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

# Permission bits do not stop root: a run as root drops the capabilities that let it pass them.
DROP = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def _unprivileged() -> list[str] | None:
    """The command prefix under which a folder of mode 000 cannot be listed, or None where none can be had."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    probe = "import os, tempfile; d = tempfile.mkdtemp(); os.chmod(d, 0); os.listdir(d)"
    done = subprocess.run([*DROP, sys.executable, "-c", probe], capture_output=True, timeout=60)
    return DROP if b"PermissionError" in done.stderr else None


needs_permissions = pytest.mark.skipif(_unprivileged() is None, reason="permission bits cannot be enforced here")


def _ingest_cli(root, index, model) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "unite_search.cli", "ingest", str(root), "--index", str(index), "--model", str(model),
           "--device", "cpu", "-q"]  # fmt: skip
    return subprocess.run([*_unprivileged(), *cmd], capture_output=True, text=True, timeout=300)


def _paths(index) -> list[str]:
    table = IndexStore(index).tables.open("image")
    return sorted(table.search().select(["path"]).limit(None).to_arrow().column("path").to_pylist())


@needs_permissions
def test_a_folder_that_cannot_be_listed_keeps_its_rows_and_an_unreadable_corpus_changes_nothing(
    tmp_path, tiny_dir, encoder
):
    """A folder that could not be listed for a while (permissions, a network mount away) is not a folder
    emptied: its rows were removed, and encoded again once it was back; a corpus folder that cannot be
    listed published an empty index."""
    root, index = tmp_path / "corpus", tmp_path / "index"
    for i in range(2):
        write_photo(root / f"album/p{i}.png", seed=i)
    write_photo(root / "top.png", seed=5)
    assert ingest(root, index, encoder=encoder).status == "ok"
    everything = ["album/p0.png", "album/p1.png", "top.png"]
    try:
        os.chmod(root / "album", 0)
        run = _ingest_cli(root, index, tiny_dir)
        assert run.returncode == 3, run.stdout + run.stderr  # finished, with failures
        assert "album [discover] cannot list folder: Permission denied" in run.stdout + run.stderr
        assert "items 3: encoded 0 (0 rows), unchanged 3, paths updated 0, removed 0" in run.stdout
        assert _paths(index) == everything
        os.chmod(root / "album", 0o755)
        os.chmod(root, 0o311)  # can be entered, not listed
        run = _ingest_cli(root, index, tiny_dir)
        assert run.returncode == 2 and "is not readable" in run.stderr, run.stdout + run.stderr  # said by the CLI
        api = (f"from unite_search import Encoder, IngestError\nfrom unite_search.ingestion import ingest\n"
               f"encoder = Encoder.load({str(tiny_dir)!r}, device='cpu')\n"
               f"try:\n    ingest({str(root)!r}, {str(index)!r}, encoder=encoder)\n"
               f"except IngestError as exc:\n    print(exc)")  # fmt: skip
        run = subprocess.run([*_unprivileged(), sys.executable, "-c", api], capture_output=True, text=True, timeout=300)
        assert f"the corpus folder {root}: cannot list folder: Permission denied; nothing was changed" in run.stdout
        assert _paths(index) == everything
    finally:
        os.chmod(root, 0o755)
        os.chmod(root / "album", 0o755)
    again = ingest(root, index, encoder=encoder)
    assert again.status == "ok" and again.encoded_rows == 0 and again.unchanged_items == 3


def test_manifest_lines_with_ids_or_paths_that_cannot_be_stored_fail_alone(tmp_path, encoder):
    """A lone surrogate (an emoji cut in half by a scraper) or a NUL in an id or a media path crashed the run,
    and every rerun; a manifest saved with a byte-order mark lost its first line."""
    root = tmp_path / "corpus"
    write_photo(root / "p.png", seed=1)
    lines = [
        {"id": "cut-\ud83d", "text": "an id with half an emoji"},
        {"id": "pic", "image": "p\ud83d.png"},
        {"id": "nul", "image": "p.png\u0000x.png"},
        {"id": "nul\u0000id", "text": "a NUL in the id"},
        {"id": "fine", "text": "a line that is fine"},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    (root / "items.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Notepad saves it
    report = ingest(root, tmp_path / "index", encoder=encoder)
    assert report.status == "finished_with_failures", report.summary()
    bad = {p.path: p.reason for p in report.failures}
    assert sorted(bad) == ["items.jsonl:1", "items.jsonl:2", "items.jsonl:3", "items.jsonl:4"]
    assert "not valid Unicode" in bad["items.jsonl:1"] and "NUL" in bad["items.jsonl:3"], bad
    assert report.shards == {"image": 1, "text": 1}


def test_a_manifest_id_that_is_a_files_row_id_is_refused(tmp_path, encoder):
    """Hits show a file's row id (its content hash); a manifest reusing one made two rows of one id: searches
    returned the file twice and the item never, and a rename then overwrote the item's row with the file's."""
    from unite_search import Index

    root, index = tmp_path / "corpus", tmp_path / "index"
    root.mkdir()
    (root / "n.txt").write_text("a note about a harbour")
    first = ingest(root, index, encoder=encoder)
    file_id = Index.open(index, encoder=encoder).query(text="harbour", target="text", k=1)[0].id
    (root / "items.jsonl").write_text(json.dumps({"id": file_id, "text": "an item that took the file's id"}) + "\n")
    report = ingest(root, index, encoder=encoder)
    assert first.status == "ok" and report.status == "finished_with_failures"
    assert [(p.path, p.stage, p.reason) for p in report.failures] == [
        ("items.jsonl:1", "manifest", f"id {file_id!r} is the id of the row of n.txt; give the item another id")
    ]
    hits = Index.open(index, encoder=encoder).query(text="harbour", target="text", k=5)
    assert [(h.id, h.path, h.text) for h in hits] == [(file_id, "n.txt", "a note about a harbour")]


def test_an_image_failure_says_what_is_wrong_in_the_same_words_and_keeps_pillows_in_detail(tmp_path, encoder):
    """Reasons are the same words every run; Pillow's own message (with the absolute path, byte counts) is the
    failure's detail, as a video decoder's is."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    whole = write_photo(tmp_path / "whole.jpg", seed=2, size=(300, 200))
    (root / "cut.jpg").write_bytes(whole.read_bytes()[:2000])
    report = ingest(root, tmp_path / "index", encoder=encoder)
    got = {p.path: (p.stage, p.reason, p.detail) for p in report.failures}
    assert got["garbage.png"][:2] == ("read", "cannot read image header: damaged or not an image (no decoder can "
                                      "open it)")  # fmt: skip
    assert got["cut.jpg"][:2] == ("decode", "cannot read image: truncated image (an incomplete copy or download)")
    assert str(root / "garbage.png") in got["garbage.png"][2] and "truncated" in got["cut.jpg"][2]
