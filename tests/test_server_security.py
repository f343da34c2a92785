"""What the server will not do: run a corpus file as a page on its origin, hand out URLs a browser
rewrites, or answer a page that reached it under another host's name."""

from __future__ import annotations

import json
import shutil

import pytest
from corpora import write_photo
from fastapi.testclient import TestClient
from test_server import _search

from unite_search import Index
from unite_search.ingestion import ingest
from unite_search.server import create_app


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch):
    monkeypatch.delenv("UNITE_SEARCH_TOKEN", raising=False)


@pytest.fixture(scope="module")
def dots(tmp_path_factory, encoder):
    """Two photos, each the image of a manifest item whose id is "." or ".."."""
    root = tmp_path_factory.mktemp("dots") / "corpus"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "b.png", seed=2)
    items = [{"id": ".", "image": "a.png", "text": "one"}, {"id": "..", "image": "b.png", "text": "two"}]
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    ingest(root, root.parent / "index", encoder=encoder)
    return root, root.parent / "index"


def test_a_file_swapped_after_ingest_is_never_sent(encoder, tmp_path):
    """A row's file swapped for a link to an .html or .svg file of the corpus was served (as a download since
    its type came from its bytes; as text/html or image/svg+xml before that: a script run on this origin).
    Only the bytes a row was made from are sent."""
    root = tmp_path / "corpus"
    write_photo(root / "pic.jpg", seed=3)
    (root / "page.html").write_text("<script>document.title = 'ran'</script>")
    (root / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>')
    ingest(root, tmp_path / "index", encoder=encoder)
    with TestClient(create_app(Index.open(tmp_path / "index", encoder=encoder))) as c:
        url = _search(c, text="x", target="image", k=1)["hits"][0]["media_url"]
        got = c.get(url)
        assert got.headers["content-type"] == "image/jpeg" and got.headers["x-content-type-options"] == "nosniff"
        original = (root / "pic.jpg").read_bytes()
        for target in ("page.html", "drawing.svg"):
            (root / "pic.jpg").unlink()
            (root / "pic.jpg").symlink_to(root / target)
            assert c.get(url).status_code == 404
        (root / "pic.jpg").unlink()
        (root / "pic.jpg").write_bytes(original)  # the same bytes again, a new file: sent
        assert c.get(url).content == original


def test_an_item_with_an_image_and_a_video_sends_its_image_and_a_planted_thumbnail_link_is_never_followed(
    encoder, tmp_path
):
    """Such an item's row named its image as its path but held its video's hash: never sent once files were
    checked by their hash. A thumbnail's cache name is predictable from its row: a link planted there (in an
    index someone shared) was read and sent."""
    from urllib.parse import quote

    from corpora import write_clip

    root, index = tmp_path / "corpus", tmp_path / "index"
    write_photo(root / "pic.png", seed=6)
    write_clip(root / "clip.mp4", 8, fps=4, seed=1)
    item = {"id": "both", "image": "pic.png", "video": "clip.mp4", "text": "the picture and the clip"}
    (root / "items.jsonl").write_text(json.dumps(item) + "\n")
    ingest(root, index, encoder=encoder)
    secret = tmp_path / "secret.txt"
    secret.write_text("private key material")
    with TestClient(create_app(Index.open(index, encoder=encoder))) as c:
        assert c.get("/media/both").content == (root / "pic.png").read_bytes()
        hit = next(h for h in _search(c, text="x", target="image", k=5)["hits"] if h["path"] == "pic.png")
        first = c.get(hit["thumb_url"])
        assert first.headers["content-type"] == "image/jpeg"
        (cached,) = (index / "thumbs").glob("*.jpg")
        cached.unlink()
        cached.symlink_to(secret)
        again = c.get(f"/thumbs/{quote(hit['id'], safe='')}")
        assert again.status_code == 200 and b"private" not in again.content and again.content == first.content


def test_an_index_edited_to_name_other_files_gets_none_of_them_sent(encoder, tmp_path):
    """The manifest says where the corpus lies: an index shared with its manifest's corpus set to another folder
    (the home folder of whoever serves it, say) had the server send that folder's files at the rows' paths."""
    from unite_search.diskio import write_json

    root, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    write_photo(root / "keys/id.png", seed=4)
    (root / "keys/notes.txt").write_text("a harmless note")
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    write_photo(elsewhere / "keys/id.png", seed=5)  # another file at each row's path
    (elsewhere / "keys/notes.txt").write_text("private key material")
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["corpus"] = str(elsewhere)
    write_json(index / "manifest.json", manifest)
    with TestClient(create_app(Index.open(index, encoder=encoder))) as c:
        hits = [*_search(c, text="x", target="image", k=1)["hits"], *_search(c, text="x", target="text", k=1)["hits"]]
        assert [h["path"] for h in hits] == ["keys/id.png", "keys/notes.txt"]
        for url in (hits[0]["media_url"], hits[0]["thumb_url"], hits[1]["media_url"]):
            got = c.get(url)
            assert got.status_code == 404 and b"private" not in got.content, url
        shutil.rmtree(elsewhere)
        shutil.copytree(root, elsewhere)  # the corpus itself, moved there: its files are sent
        assert c.get(hits[1]["media_url"]).content == b"a harmless note"
        assert c.get(hits[0]["thumb_url"]).headers["content-type"] == "image/jpeg"


def test_rows_whose_id_is_a_dot_segment_get_urls_a_browser_keeps(dots, encoder):
    """Ids "." and ".." made "/thumbs/.." and "/media/.": a browser resolves those to "/" and "/media/"."""
    from urllib.parse import urljoin

    root, index = dots
    app = create_app(Index.open(index, encoder=encoder), token="s3cret")
    with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as c:
        hits = {h["id"]: h for h in _search(c, text="x", target="image+text", k=5)["hits"]}
        assert set(hits) == {".", ".."}
        for row_id, name in ((".", "a.png"), ("..", "b.png")):
            for kind in ("thumb_url", "media_url"):
                url = hits[row_id][kind]
                assert urljoin("http://host/", url) == f"http://host{url}"  # what a browser would ask
            assert c.get(hits[row_id]["media_url"]).content == (root / name).read_bytes()
            assert c.get(hits[row_id]["thumb_url"]).headers["content-type"] == "image/jpeg"
    with TestClient(app) as c:  # <img> and <video> send the token as ?token=, on these routes too
        assert c.get(hits[".."]["media_url"]).status_code == 401
        assert c.get(hits[".."]["media_url"] + "&token=s3cret").status_code == 200


def test_serve_without_a_token_answers_only_requests_to_this_machines_names(dots, monkeypatch):
    """A page whose name was made to point at 127.0.0.1 (DNS rebinding) read the index through a
    visitor's browser: the server answered any Host. Served on loopback without a token, it no longer does."""
    import uvicorn
    from click.testing import CliRunner

    from unite_search.cli import main

    _, index = dots
    served = {}

    def keep(server, sockets=()):  # serve hands uvicorn its app and the sockets it bound: kept, not run
        server.started = True
        served.update(app=server.config.app)
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", keep)
    monkeypatch.delenv("UNITE_SEARCH_TOKEN", raising=False)
    for args, guarded in (
        (["--device", "cpu", "--port", "0"], True),
        (["--device", "cpu", "--port", "0", "--token", "t"], False),
    ):
        result = CliRunner().invoke(main, ["serve", str(index), *args])
        assert result.exit_code == 0, result.output
        headers = {"Authorization": "Bearer t"} if not guarded else {}
        hosts = [("http://127.0.0.1:8000", True), ("http://localhost", True), ("http://[::1]:9", True)]
        hosts += [("http://evil.example:8000", not guarded), ("http://127.0.0.1.evil.example", not guarded)]
        for base, ok in hosts:
            with TestClient(served["app"], base_url=base, headers=headers) as c:
                got = c.get("/info")
                assert got.status_code == (200 if ok else 403), (args, base, got.text)
                if not ok:
                    assert got.json()["error"] == "forbidden"


@pytest.mark.parametrize("root_path", ["/us", "/us/"])
def test_under_a_path_prefix_the_page_and_healthz_stay_open_with_a_token(dots, encoder, root_path):
    """Under a proxy's prefix the token guard compared the whole path: /us/healthz and the page needed the
    token (and with a root path ending in '/', as uvicorn --root-path /us/ gives, still did)."""
    with TestClient(create_app(Index.open(dots[1], encoder=encoder), token="s3cret"), root_path=root_path) as c:
        prefix = root_path + "/"  # what uvicorn --root-path gives: the root path, then the request's own
        for open_path in ("healthz", "", "static/app.js"):
            assert c.get(prefix + open_path).status_code == 200, open_path
        assert c.get(prefix + "info").status_code == 401
        assert c.get(prefix + "info", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_file_is_hashed_once_however_many_ask_at_once_and_the_least_used_is_forgotten(tmp_path, monkeypatch):
    """Four range requests at once (a browser's <video>) hashed a 2 GiB file four times; the cache forgot its oldest
    file, not its least used one, so a server cycling through more files than it keeps hashed on every request."""
    import hashlib
    import os
    import threading

    from unite_search.server import files

    made, real = [], hashlib.sha256

    def counted(*args, **kwargs):  # (the hashlib module itself is patched: only the Digests' calls take no data)
        made.extend([] if args else [1])
        return real(*args, **kwargs)

    monkeypatch.setattr(files.hashlib, "sha256", counted)
    paths = []
    for name, size in (("big", 48 << 20), ("a", 10), ("b", 20), ("c", 30)):
        (tmp_path / name).write_bytes(os.urandom(size))
        paths.append(tmp_path / name)
    digests = files.Digests(limit=2)

    def of(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            return digests.of(fd, os.fstat(fd))
        finally:
            os.close(fd)

    got = []
    threads = [threading.Thread(target=lambda: got.append(of(paths[0]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [real(paths[0].read_bytes()).hexdigest()] * 4 and len(made) == 1
    made.clear()
    for path in (paths[1], paths[2], paths[1], paths[3], paths[1]):  # a, b, a, c (b goes, a stays), a
        of(path)
    assert len(made) == 3  # a, b and c once each
