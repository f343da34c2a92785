"""The server follows what ingest publishes: every change of the manifest, one state per request, never the
vectors of another model, and a failed refresh tried again."""

from __future__ import annotations

import os
import re
import shutil
import threading

import pytest
from corpora import write_photo
from fastapi.testclient import TestClient

from unite_search import Encoder, Index
from unite_search import index as index_module
from unite_search.errors import IndexMismatchError
from unite_search.ingestion import ingest
from unite_search.server import create_app
from unite_search.server import state as server_state
from unite_search.testing import tiny_model


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch):
    monkeypatch.delenv("UNITE_SEARCH_TOKEN", raising=False)


def _corpus(root, names: list[str], seed: int = 0):
    for i, name in enumerate(names):
        write_photo(root / name, seed=seed + i)
    return root


def _paths(client, **query) -> list[str]:
    r = client.post("/search", json={"text": "x", "target": "image", "k": 10, **query})
    assert r.status_code == 200, r.text
    return sorted(h["path"] for h in r.json()["hits"])


def test_an_index_built_again_in_place_is_followed_though_its_serial_starts_over(tmp_path, encoder, monkeypatch):
    from unite_search import manifest

    monkeypatch.setattr(manifest, "now", lambda: "2026-11-29T12:00:00Z")  # both built within one second
    root, index = _corpus(tmp_path / "corpus", ["p0.png", "p1.png"]), tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    with TestClient(create_app(Index.open(index, encoder=encoder))) as c:
        assert _paths(c) == ["p0.png", "p1.png"]
        shutil.rmtree(index)  # the README's way to rebuild: serial 1 again
        shutil.rmtree(root)
        _corpus(root, ["q0.png", "q1.png", "q2.png"], seed=5)
        assert ingest(root, index, encoder=encoder).status == "ok"
        assert _paths(c) == ["q0.png", "q1.png", "q2.png"]
        assert c.get("/info").json()["refresh_error"] is None


def test_a_rerun_that_publishes_nothing_is_not_a_new_state(tmp_path, encoder):
    """A rerun over a touched file rewrites the manifest (its scan, its time) and publishes nothing: the server
    keeps its state, and the FAISS files it has read, instead of reading every one again."""
    root, index = _corpus(tmp_path / "corpus", ["p0.png", "p1.png"]), tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    app = create_app(Index.open(index, encoder=encoder))
    with TestClient(app) as c:
        assert _paths(c) == ["p0.png", "p1.png"]
        before = (index / "manifest.json").read_text()
        os.utime(root / "p0.png", ns=(1, 1))
        again = ingest(root, index, encoder=encoder)
        assert not again.published and (index / "manifest.json").read_text() != before
        assert _paths(c) == ["p0.png", "p1.png"]
        assert re.search(r"^unite_search_index_refreshes_total 0$", c.get("/metrics").text, re.M)


def test_a_state_built_with_another_model_is_not_served_with_this_ones_vectors(tmp_path, encoder, monkeypatch):
    from unite_search import manifest

    monkeypatch.setattr(manifest, "now", lambda: "2026-11-29T12:00:00Z")  # both built within one second
    root, index = _corpus(tmp_path / "corpus", ["p0.png", "p1.png"]), tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    opened = Index.open(index, encoder=encoder)
    with TestClient(create_app(opened)) as c:
        like = _like_id(c)
        before = c.post("/search", json={"like": like, "k": 5}).json()["hits"]
        other = Encoder.load(tiny_model(tmp_path / "other", seed=1), device="cpu")
        shutil.rmtree(index)
        assert ingest(root, index, encoder=other).status == "ok"  # rebuilt with another model
        opens, real_open = [], index_module.Snapshot.open
        monkeypatch.setattr(index_module.Snapshot, "open", lambda *a, **kw: opens.append(1) or real_open(*a, **kw))
        for _ in range(3):
            r = c.post("/search", json={"text": "x", "target": "image"})
            assert r.status_code == 200  # still the state it can answer, with its own vectors
        assert opens == []  # refused from its manifest, before any of its files was opened, and not retried
        info = c.get("/info").json()
        assert info["refresh_error"].startswith("IndexMismatchError: ") and "another model" in info["refresh_error"]
        assert c.post("/search", json={"like": like, "k": 5}).json()["hits"] == before
    with pytest.raises(IndexMismatchError):
        opened.refresh()  # the Python API refuses the same, and keeps its state
    assert opened.manifest["encoder"]["revision"] == encoder.revision


def _like_id(client) -> str:
    return client.post("/search", json={"text": "x", "target": "image"}).json()["hits"][0]["id"]


def test_a_publish_while_the_server_started_is_followed_at_the_first_request(tmp_path, encoder):
    root, index = _corpus(tmp_path / "corpus", ["p0.png"]), tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    opened = Index.open(index, encoder=encoder)  # then the model loads (minutes), while an ingest publishes:
    write_photo(root / "new.png", seed=9)
    assert ingest(root, index, encoder=encoder).status == "ok"
    with TestClient(create_app(opened)) as c:
        assert _paths(c) == ["new.png", "p0.png"]


def test_a_failed_refresh_is_tried_again(tmp_path, encoder, monkeypatch):
    root, index = _corpus(tmp_path / "corpus", ["p0.png"]), tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    monkeypatch.setattr(server_state, "REFRESH_RETRY_S", 0.0)
    app = create_app(Index.open(index, encoder=encoder))
    with TestClient(app) as c:
        assert _paths(c) == ["p0.png"]
        write_photo(root / "new.png", seed=9)
        assert ingest(root, index, encoder=encoder).status == "ok"
        real, calls = Index.refresh, []

        def once_failing(self):
            calls.append(1)
            if len(calls) == 1:
                raise OSError(24, "Too many open files")  # a passing shortage
            real(self)

        monkeypatch.setattr(Index, "refresh", once_failing)
        assert _paths(c) == ["p0.png"]  # this request: the state it had
        assert app.state.server.refresh_error == "OSError: [Errno 24] Too many open files"
        assert _paths(c) == ["new.png", "p0.png"] and len(calls) == 2  # the next one: tried again
        assert c.get("/info").json()["refresh_error"] is None


def test_a_request_plans_and_searches_one_state(tmp_path, encoder, monkeypatch):
    """A publish (and refresh) while a query waits for the encoder: its plan and its hits are of the state it
    started on."""
    root, index = _corpus(tmp_path / "corpus", ["p0.png", "p1.png"]), tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    opened = Index.open(index, encoder=encoder)
    app = create_app(opened)
    server = app.state.server
    submit, gate = server.batcher.submit, threading.Event()

    def publish_first(prepared):
        write_photo(root / "new.png", seed=9)
        assert ingest(root, index, encoder=encoder).status == "ok"
        opened.refresh()
        gate.set()
        return submit(prepared)

    monkeypatch.setattr(server.batcher, "submit", publish_first)
    with TestClient(app) as c:
        r = c.post("/search", json={"text": "x", "target": "image", "k": 10, "explain": True}).json()
        assert gate.is_set() and opened.shards["image"] == 3
        assert sorted(h["path"] for h in r["hits"]) == ["p0.png", "p1.png"]
        assert "of 2 rows" in r["plan"]
