"""Ingest reads only the folder it was given: manifests and symlinks cannot pull other files in."""

from __future__ import annotations

import json
import os

import pytest
from corpora import write_photo

from unite_search import Index
from unite_search.corpus import file_sha256
from unite_search.errors import IndexDamagedError
from unite_search.ingestion import ingest
from unite_search.store import IndexStore


def _corpus(tmp_path):
    outside = tmp_path / "outside"
    secret = write_photo(outside / "secret.png", seed=7)
    (outside / "passwd.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    write_photo(outside / "album/far.png", seed=8)
    root = tmp_path / "corpus"
    write_photo(root / "photos/a.png", seed=1)
    write_photo(root / "photos/b.png", seed=2)
    os.symlink(secret, root / "photos/link.png")  # a file link leading out
    os.symlink(outside / "passwd.txt", root / "notes.md")  # a text link leading out
    os.symlink(outside / "album", root / "album")  # a folder link leading out
    os.symlink(root / "photos/a.png", root / "photos/alias.png")  # a link that stays inside: fine
    os.symlink(outside / "nothing-here.png", root / "photos/dangling.png")  # leads out, target missing
    lines = [
        {"id": "abs", "image": str(secret), "text": "an absolute path outside"},
        {"id": "abs-missing", "image": str(outside / "missing.png"), "text": "an absolute path outside"},
        {"id": "up", "image": "../outside/secret.png", "text": "a relative path leading out"},
        {"id": "up-missing", "image": "../outside/missing.png", "text": "a relative path leading out"},
        {"id": "via-link", "image": "photos/link.png", "text": "a path inside that is a link leading out"},
        {"id": "inside", "image": "photos/b.png", "text": "the same photo at night"},
    ]
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root, secret


def _hashes(index) -> set[str]:
    store = IndexStore(index)
    shards = store.require_manifest()["shards"]
    return {h for s in shards for h in store.read_rows(s, ["content_hash"])["content_hash"].to_pylist()}


def _texts(index) -> list[str]:
    store = IndexStore(index)
    shards = store.require_manifest()["shards"]
    return [t for s in shards for t in store.read_rows(s, ["text"])["text"].to_pylist() if t]


def test_nothing_outside_the_corpus_is_read_by_default(tmp_path, encoder):
    root, secret = _corpus(tmp_path)
    index = tmp_path / "index"
    report = ingest(root, index, encoder=encoder)
    assert file_sha256(secret) not in _hashes(index)
    assert not any("root:x" in t for t in _texts(index))
    skipped = {p.path: p.reason for p in report.skipped}
    for rel in ("photos/link.png", "notes.md", "album", "photos/dangling.png"):
        assert "outside the corpus folder" in skipped[rel] and "--allow-outside" in skipped[rel], rel
    assert skipped["photos/dangling.png"] == skipped["photos/link.png"]  # a missing target looks the same
    failed = {p.path: p.reason for p in report.failures}
    assert set(failed) == {f"items.jsonl:{n}" for n in range(1, 6)}
    for missing, present in (("items.jsonl:2", "items.jsonl:1"), ("items.jsonl:4", "items.jsonl:3")):
        # the message names the path as written, never whether the file exists
        assert failed[missing].replace("missing.png", "secret.png") == failed[present]
    assert "outside the corpus folder" in failed["items.jsonl:5"]
    rows = IndexStore(index).read_rows("image", ["path", "paths"]).to_pylist()
    assert sorted(r["path"] for r in rows) == ["photos/a.png", "photos/b.png"]
    assert next(r["paths"] for r in rows if r["path"] == "photos/a.png") == ["photos/a.png", "photos/alias.png"]
    assert IndexStore(index).read_rows("image+text", ["id"])["id"].to_pylist() == ["inside"]


def test_allow_outside_opts_in(tmp_path, encoder):
    root, secret = _corpus(tmp_path)
    index = tmp_path / "index"
    report = ingest(root, index, encoder=encoder, allow_outside=True)
    assert file_sha256(secret) in _hashes(index)
    assert any("root:x" in t for t in _texts(index))
    failed = {p.path: p.reason for p in report.failures}  # only the files that do not exist
    assert failed == {"items.jsonl:2": "image ../outside/missing.png: not found",
                      "items.jsonl:4": "image ../outside/missing.png: not found",
                      "photos/dangling.png": "broken symlink"}  # fmt: skip
    ids = set(IndexStore(index).read_rows("image+text", ["id"])["id"].to_pylist())
    assert ids == {"abs", "up", "via-link", "inside"}


def test_an_index_holding_a_link_out_of_its_folder_is_refused(tmp_path, encoder):
    """A shared index cannot make a reader (or the next ingest) read another folder's files through a symlink:
    not its tables, not one file of a table, not its manifest. A link that stays inside the index is fine."""
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "b.png", seed=2)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    away = tmp_path / "elsewhere"
    away.mkdir()

    def link_away(rel: str) -> None:
        (index / rel).rename(away / rel.replace("/", "_"))
        os.symlink(away / rel.replace("/", "_"), index / rel)

    def put_back(rel: str) -> None:
        os.unlink(index / rel)
        (away / rel.replace("/", "_")).rename(index / rel)

    data = next((index / "tables/image.lance/data").iterdir()).relative_to(index).as_posix()
    run = next((index / "runs").iterdir()).relative_to(index).as_posix()  # info and /info show it
    for rel in ("tables", "tables/image.lance", data, "manifest.json", "faiss", run):
        link_away(rel)
        for attempt in (lambda: Index.open(index, encoder=encoder), lambda: ingest(root, index, encoder=encoder)):
            with pytest.raises(IndexDamagedError, match=f"{rel} is a symlink leading out of the index folder"):
                attempt()
        put_back(rel)
    (index / "tables").rename(index / "tables.kept")
    os.symlink("tables.kept", index / "tables")  # stays inside
    assert len(Index.open(index, encoder=encoder).query(text="a photo", k=5)) == 2
