"""``unite-search serve``: the HTTP API on a tiny-model index, through FastAPI's TestClient.

A live uvicorn (concurrent queries, the upload pool, the command) is in ``test_server_live.py``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner
from corpora import LONG_TEXT, write_bomb_png, write_clip, write_damaged_mp4, write_photo
from fastapi.testclient import TestClient
from PIL import Image

from unite_search import Index, PlanError
from unite_search.cli import main
from unite_search.ingestion import ingest
from unite_search.server import create_app, parse_range

OPTS = {"segment_seconds": 4.0, "segment_overlap": 1.0}
ODD_TEXT_ID = "plain/1 ?#%"  # a declared id with every character a URL path cannot hold as is
ODD_IMAGE_ID = "night/\u00e4 #1"


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch):
    monkeypatch.delenv("UNITE_SEARCH_TOKEN", raising=False)


def build_served_index(base: Path, encoder) -> tuple[Path, Path]:
    """The corpus these tests serve (every kind, ids a URL path cannot hold as is) and its index."""
    root = base / "corpus"
    write_photo(root / "photos/wide.png", seed=1, size=(640, 400))
    write_photo(root / "photos/small.jpg", seed=2, size=(80, 60))
    write_photo(root / "photos/tall.png", seed=3, size=(160, 480))
    write_clip(root / "clips/long.mp4", 80, fps=8, seed=2)  # 10 s: segments 0-4, 3-7, 6-10
    (root / "notes").mkdir()
    (root / "notes/fox.txt").write_text("A red fox crossed the snowy road at dawn.")
    (root / "notes/long.md").write_text(LONG_TEXT)  # passages: ids with '#'
    items = [
        {"id": ODD_TEXT_ID, "text": "a declared text item"},
        {"id": ODD_IMAGE_ID, "image": "photos/wide.png", "text": "the same view at night"},
    ]
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    index = base / "index"
    report = ingest(root, index, encoder=encoder, passage_chars=400, **OPTS)
    assert report.status == "ok", report.summary()
    return root, index


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    return build_served_index(tmp_path_factory.mktemp("serve"), encoder)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(built, encoder, uploads):
    app = create_app(Index.open(built[1], encoder=encoder), upload_dir=uploads)
    with TestClient(app) as c:
        yield c


def _search(client, **body):
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _hit(client, path: str, shard: str = "image", **extra):
    hits = _search(client, text="x", target=shard, k=50, **extra)["hits"]
    return next(h for h in hits if h["path"] == path)


def _assert_error(r, status: int, kind: str | None = None, says: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    if kind is not None:
        assert body["error"] == kind, body
    if says is not None:
        assert says in body["detail"], body


# ----------------------------------------------------------------------------------------- search
def test_search_json_answers_hits_with_urls_and_plan(client, built):
    body = _search(client, text="a red fox", k=20, explain=True)
    assert "reciprocal-rank fusion" in body["plan"] and {h["shard"] for h in body["hits"]} == {"image", "video"}
    for h in body["hits"]:
        quoted = quote(h["id"], safe="")
        assert h["media_url"] == f"/media/{quoted}" and h["thumb_url"] == f"/thumbs/{quoted}"
        assert {"id", "score", "rank", "shard", "path", "start", "end", "caption", "metadata"} <= set(h)
    assert _search(client, text="a red fox")["plan"] is None
    segment = next(h for h in body["hits"] if h["path"] == "clips/long.mp4")
    assert "@" in segment["id"] and "%40" in segment["media_url"]
    texts = _search(client, text="a declared text item", target="text", k=50)["hits"]
    declared = next(h for h in texts if h["id"] == ODD_TEXT_ID)
    assert declared["media_url"] is None and declared["thumb_url"] is None  # no file
    fox = next(h for h in texts if h["path"] == "notes/fox.txt")
    assert fox["media_url"] == f"/media/{quote(fox['id'], safe='')}" and fox["thumb_url"] is None
    passage = next(h for h in texts if h["path"] == "notes/long.md")
    assert "#" in passage["id"] and "%23" in passage["media_url"]


def test_search_takes_like_where_exclude_and_instruction(client, built):
    wide = _hit(client, "photos/wide.png")
    similar = _search(client, like=wide["id"], k=10)["hits"]
    assert similar and wide["id"] not in [h["id"] for h in similar]
    filtered = _search(client, text="x", target="image", where="width >= 100", k=10)["hits"]
    assert {h["path"] for h in filtered} == {"photos/wide.png", "photos/tall.png"}
    kept = _search(client, text="x", target="image", exclude=[wide["id"]], instruction="Find an image:", k=10)
    assert wide["id"] not in [h["id"] for h in kept["hits"]]
    both = _search(client, text="x", target=["image", "image+text"], k=10)["hits"]
    assert {h["shard"] for h in both} == {"image", "image+text"}


def test_search_with_uploaded_image_video_and_composed(client, built, uploads):
    root, _ = built
    with open(root / "photos/small.jpg", "rb") as fh:
        r = client.post("/search", files={"image": ("q.jpg", fh, "image/jpeg")}, data={"k": "2", "explain": "on"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hits"][0]["path"] == "photos/small.jpg" and body["hits"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert len(body["hits"]) == 2 and body["plan"].startswith("query     image")
    with open(root / "clips/long.mp4", "rb") as fh:
        r = client.post("/search", files={"video": ("q.mp4", fh, "video/mp4")}, data={"target": "video"})
    assert r.status_code == 200, r.text
    assert {h["path"] for h in r.json()["hits"]} == {"clips/long.mp4"}
    with open(root / "photos/wide.png", "rb") as fh:  # composed: the reference itself is left out
        r = client.post("/search", files={"image": ("q.png", fh)}, data={"text": "the same view at night"})
    assert r.status_code == 200, r.text
    paths = [h["path"] for h in r.json()["hits"]]
    assert paths and "photos/wide.png" not in paths
    assert list(uploads.iterdir()) == []  # every upload was removed with its request


def test_search_form_fields_are_checked(client, built):
    root, _ = built
    cases = [
        ({"text": "x", "k": "many"}, 400, "k must be a positive integer"),
        ({"text": "x", "k": "0"}, 400, "k must be a positive integer"),
        ({"text": "x", "colour": "red"}, 400, "unknown field 'colour'"),
        ({"text": "x", "explain": "maybe"}, 400, "explain must be true or false"),
        ({"image": "/etc/hostname"}, 400, "image must be one uploaded file"),
        ({"text": ""}, 400, "a query needs text"),
    ]
    for data, status, says in cases:
        _assert_error(client.post("/search", data=data), status, says=says)
    with open(root / "notes/fox.txt", "rb") as fh:
        r = client.post("/search", files={"text": ("t.txt", fh)})
    _assert_error(r, 400, "bad_query", "a form field, not a file")


def test_search_errors_are_typed_json(client):
    cases = [
        (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "bad_json"),
        (dict(content=b"\xff\xfe", headers={"Content-Type": "application/json"}), 400, "bad_json"),
        (dict(json=["a list"]), 400, "bad_query"),
        (dict(json={"text": "x", "target": "nowhere"}), 400, "bad_query"),
        (dict(json={"text": "x", "target": "text+video"}), 400, "bad_query"),  # no such shard here
        (dict(json={"text": "x", "k": 0}), 400, "bad_query"),
        (dict(json={"text": "x", "k": "3"}), 400, "bad_query"),
        (dict(json={"text": "x", "k": True}), 400, "bad_query"),
        (dict(json={"text": "x", "where": "no_such_column = 1"}), 400, "bad_query"),
        (dict(json={"text": "x", "where": 5}), 400, "bad_query"),
        (dict(json={}), 400, "bad_query"),
        (dict(json={"text": "   "}), 400, "bad_query"),
        (dict(json={"like": "no-such-row"}), 404, "not_found"),  # as /items/{id} answers it
        (dict(json={"like": "x", "text": "y"}), 400, "bad_query"),
        (dict(json={"text": "x", "exclude": [1]}), 400, "bad_query"),
        (dict(json={"text": "x", "explain": "yes"}), 400, "bad_query"),
        (dict(json={"image": "/etc/hostname"}), 400, "bad_query"),  # no server paths through JSON
        (dict(json={"text": "x", "limit": 3}), 400, "bad_query"),
        (dict(json={"text": "<|vision_start|>"}), 400, "bad_input"),  # a reserved token of the model
        (dict(content=b"[" * 4000 + b"]" * 4000, headers={"Content-Type": "application/json"}), 400, "bad_json"),
        (
            dict(content=b'{"text": "x", "k": ' + b"9" * 5000 + b"}", headers={"Content-Type": "application/json"}),
            400,
            "bad_json",
        ),  # an integer past Python's 4,300 digits
        (dict(content=b'{"text": "\\ud800"}', headers={"Content-Type": "application/json"}), 400, "bad_query"),
        (
            dict(content=b'{"instruction": "\\udfff", "text": "x"}', headers={"Content-Type": "application/json"}),
            400,
            "bad_query",
        ),
        (dict(content=b'{"like": "\\ud800"}', headers={"Content-Type": "application/json"}), 404, "not_found"),
        (dict(json={"text": "x", "where": " AND ".join(["width > 0"] * 50_000)}), 400, "bad_query"),
        (dict(content=b"text=x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(content=b"x" * (2 << 20), headers={"Content-Type": "application/json"}), 413, "too_large"),
    ]
    for kwargs, status, kind in cases:
        _assert_error(client.post("/search", **kwargs), status, kind)
    _assert_error(client.get("/search"), 405, "method_not_allowed")
    _assert_error(client.get("/no/such/endpoint"), 404, "not_found")


def test_where_cannot_change_data(client, built):
    from unite_search.tables import ShardTables

    _, index = built
    manifest = (index / "manifest.json").read_bytes()
    versions = ShardTables(index / "tables").versions()
    before = _search(client, text="x", target="image", k=10)["hits"]
    statements = [
        "1=1; DROP TABLE x",
        "id = 'a' OR delete",
        "width > 0; DELETE FROM image",
        "width > 0 -- ",
        "width > 0 /* */",
        "1=1) OR (1=1",
        "id = 'a'; UPDATE image SET path = 'x'",
        "DROP TABLE image",
        "width > 0 UNION SELECT * FROM image",
    ]
    for where in statements:
        _assert_error(client.post("/search", json={"text": "x", "target": "image", "where": where}), 400, "bad_query")
        _assert_error(client.post("/search", data={"text": "x", "where": where}), 400, "bad_query")
    assert (index / "manifest.json").read_bytes() == manifest
    assert ShardTables(index / "tables").versions() == versions
    assert _search(client, text="x", target="image", k=10)["hits"] == before


def test_batch_search(client):
    r = client.post("/search/batch", json={"queries": [{"text": "a fox", "k": 2}, {"text": "x", "target": "text"}]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and len(results[0]["hits"]) == 2 and results[0]["plan"] is None
    assert {h["shard"] for h in results[1]["hits"]} == {"text"}
    single = _search(client, text="a fox", k=2)["hits"]
    assert [h["id"] for h in results[0]["hits"]] == [h["id"] for h in single]
    explained = client.post("/search/batch", json={"queries": [{"text": "a", "explain": True}]}).json()
    assert explained["results"][0]["plan"].startswith("query     text")
    bad = [
        ({"queries": [{"text": "a"}, {"text": "b", "k": 0}]}, "query 1: k must be a positive integer"),
        ({"queries": [{"text": "a"}, "b"]}, "query 1 must be a JSON object"),
        ({"queries": []}, "1 to 64 queries"),
        ({"queries": [{"text": "a"}] * 65}, "1 to 64 queries"),
        ({"queries": {"text": "a"}}, "a batch is a JSON object"),
        ({"text": "a"}, "a batch is a JSON object"),
    ]
    for body, says in bad:
        _assert_error(client.post("/search/batch", json=body), 400, "bad_query", says)
    unknown = {"queries": [{"text": "a"}, {"like": "no-such-row"}]}
    _assert_error(client.post("/search/batch", json=unknown), 404, "not_found", "query 1: no row with id 'no-such-row'")


# ------------------------------------------------------------------------------------------- rows
def test_items_answers_the_stored_row(client, built):
    hit = _hit(client, "photos/wide.png")
    r = client.get(f"/items/{quote(hit['id'], safe='')}")
    assert r.status_code == 200, r.text
    row = r.json()
    assert row["id"] == hit["id"] and row["path"] == "photos/wide.png" and (row["width"], row["height"]) == (640, 400)
    assert "vector" not in row and {"content_hash", "size", "mtime", "unit"} <= set(row)
    odd = client.get(f"/items/{quote(ODD_TEXT_ID, safe='')}")
    assert odd.status_code == 200 and odd.json()["text"] == "a declared text item"
    _assert_error(client.get("/items/no-such-row"), 404, "not_found")
    _assert_error(client.get(f"/items/{quote(hit['id'], safe='')}x"), 404, "not_found")


def test_media_serves_files_with_ranges(client, built):
    root, _ = built
    wide = _hit(client, "photos/wide.png")
    data = (root / "photos/wide.png").read_bytes()
    r = client.get(wide["media_url"])
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/png" and r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-content-type-options"] == "nosniff"
    size = len(data)
    ranges = {
        "bytes=0-9": (0, 9),
        "bytes=10-": (10, size - 1),
        "bytes=-5": (size - 5, size - 1),
        f"bytes=100-{size + 1000}": (100, size - 1),
        f"bytes=-{size + 7}": (0, size - 1),
    }
    for header, (a, b) in ranges.items():
        r = client.get(wide["media_url"], headers={"Range": header})
        assert r.status_code == 206, (header, r.text)
        assert r.headers["content-range"] == f"bytes {a}-{b}/{size}" and r.content == data[a : b + 1]
        assert int(r.headers["content-length"]) == b - a + 1
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        r = client.get(wide["media_url"], headers={"Range": header})
        _assert_error(r, 416, "range_not_satisfiable")
        assert r.headers["content-range"] == f"bytes */{size}"
    for ignored in ("bytes=9-2", "items=0-1", "bytes=0-1,5-6"):  # invalid or multi-range: the whole file
        r = client.get(wide["media_url"], headers={"Range": ignored})
        assert r.status_code == 200 and r.content == data
    head = client.head(wide["media_url"], headers={"Range": "bytes=0-99"})
    assert head.status_code == 206 and head.headers["content-length"] == "100" and head.content == b""
    clip = _hit(client, "clips/long.mp4", shard="video")
    r = client.get(clip["media_url"], headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["content-type"] == "video/mp4" and len(r.content) == 100
    fox = _hit(client, "notes/fox.txt", shard="text")
    r = client.get(fox["media_url"])
    assert r.headers["content-type"].startswith("text/plain") and r.text == (root / "notes/fox.txt").read_text()
    _assert_error(client.get(f"/media/{quote(ODD_TEXT_ID, safe='')}"), 404, "not_found")  # a row without a file
    _assert_error(client.get("/media/no-such-row"), 404, "not_found")


def test_thumbnails_are_small_jpegs_made_once(client, built):
    _, index = built
    wide = _hit(client, "photos/wide.png")
    r = client.get(wide["thumb_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and img.size == (320, 200)
    cached = list((index / "thumbs").glob("*.jpg"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = client.get(wide["thumb_url"])
    assert again.content == r.content and cached[0].stat().st_mtime_ns == stamp  # read from the cache
    small = Image.open(io.BytesIO(client.get(_hit(client, "photos/small.jpg")["thumb_url"]).content))
    assert small.size == (80, 60)  # never enlarged
    tall = Image.open(io.BytesIO(client.get(_hit(client, "photos/tall.png")["thumb_url"]).content))
    assert tall.size[1] == 320 and tall.size[0] in (106, 107)
    odd = client.get(f"/thumbs/{quote(ODD_IMAGE_ID, safe='')}")  # an image+text row, by an id needing quoting
    assert odd.status_code == 200 and Image.open(io.BytesIO(odd.content)).size == (320, 200)
    segments = sorted(
        (h for h in _search(client, text="x", target="video", k=10)["hits"] if h["path"] == "clips/long.mp4"),
        key=lambda h: h["start"],
    )
    assert [(h["start"], h["end"]) for h in segments] == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]
    frames = [np.asarray(Image.open(io.BytesIO(client.get(h["thumb_url"]).content))) for h in segments]
    assert all(f.shape == (48, 64, 3) for f in frames)
    assert np.abs(frames[0].astype(int) - frames[2].astype(int)).mean() > 5  # the middle of each segment
    fox = _hit(client, "notes/fox.txt", shard="text")
    _assert_error(client.get(f"/thumbs/{quote(fox['id'], safe='')}"), 404, "not_found", "text")
    _assert_error(client.get(f"/thumbs/{quote(ODD_TEXT_ID, safe='')}"), 404, "not_found")
    _assert_error(client.get("/thumbs/no-such-row"), 404, "not_found")


# ------------------------------------------------------------------------------------------ state
def test_info_healthz_metrics_docs(client, built):
    _, index = built
    info = client.get("/info").json()
    assert info["shards"]["image"]["rows"] == 3 and info["model"] and info["last_run"]["status"] == "ok"
    assert info["last_run"]["failures"] == [] and info["serving_serial"] >= 1 and info["refresh_error"] is None
    cli = CliRunner().invoke(main, ["info", str(index), "--json"])
    expected = json.loads(cli.stdout)
    assert {k: v for k, v in info.items() if k not in ("disk_bytes", "serving_serial", "refresh_error")} == {
        k: v for k, v in expected.items() if k != "disk_bytes"
    }
    assert client.get("/healthz").json() == {"ok": True}
    _search(client, text="metrics")
    text = client.get("/metrics").text
    assert re.search(r'^unite_search_requests_total\{endpoint="/search",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^unite_search_requests_total\{endpoint="/search",status="400"\} [1-9]', text, re.M)
    assert re.search(r'^unite_search_request_duration_seconds_count\{endpoint="/info"\} 1$', text, re.M)
    assert re.search(r"^unite_search_encoder_batches_total [1-9]", text, re.M)
    assert re.search(r'^unite_search_encoder_batch_size_bucket\{le="\+Inf"\} [1-9]', text, re.M)
    assert re.search(r"^unite_search_encoder_queue_depth 0$", text, re.M)
    assert re.search(r'^unite_search_index_rows\{shard="video"\} 3$', text, re.M)
    assert "# TYPE unite_search_requests_total counter" in text
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/search", "/search/batch", "/info", "/healthz", "/metrics"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/search"]["post"]["requestBody"]["content"]
    home = client.get("/")
    assert home.status_code == 200
    if (Path(__file__).parents[1] / "unite_search/static/index.html").is_file():
        assert home.headers["content-type"].startswith("text/html")
    else:
        assert home.json()["docs"] == "/docs"


def test_token_guards_every_endpoint_but_healthz_and_the_page(built, encoder, monkeypatch):
    idx = Index.open(built[1], encoder=encoder)
    with TestClient(create_app(idx, token="s3cret")) as c:
        for method, url in [("post", "/search"), ("get", "/info"), ("get", "/metrics"), ("get", "/docs"),
                            ("get", "/items/x"), ("get", "/media/x"), ("get", "/thumbs/x"),
                            ("post", "/search?token=s3cret"), ("get", "/info?token=s3cret"),
                            ("get", "/media/x?token=wrong"), ("get", "/thumbs/x?token=")]:  # fmt: skip
            r = getattr(c, method)(url)
            _assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        # the page's own files hold no index data; <img>/<video> cannot send a header, so media take ?token=
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        hit = c.post("/search", json={"text": "x", "target": "image"}, headers={"Authorization": "Bearer s3cret"})
        media, thumb = hit.json()["hits"][0]["media_url"], hit.json()["hits"][0]["thumb_url"]
        assert c.get(f"{media}?token=s3cret").status_code == 200
        assert c.get(f"{thumb}?token=s3cret").headers["content-type"] == "image/jpeg"
        for bad in ("Bearer wrong", "Basic s3cret", "s3cret", "Bearer "):
            _assert_error(c.post("/search", json={"text": "x"}, headers={"Authorization": bad}), 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/search", json={"text": "x"}, headers=ok).status_code == 200
        assert c.get("/info", headers=ok).status_code == 200
        assert c.get("/healthz").json() == {"ok": True}
    monkeypatch.setenv("UNITE_SEARCH_TOKEN", "from-env")
    app = create_app(idx)
    with TestClient(app) as c:
        _assert_error(c.get("/info"), 401)
        auth = {"Authorization": "Bearer from-env"}
        assert c.get("/info", headers=auth).status_code == 200
        image = (built[0] / "photos/small.jpg").read_bytes()
        assert c.post("/search", files={"image": ("q.jpg", image)}, headers=auth).status_code == 200
        folder = app.state.server.upload_dir
        assert folder.is_dir() and list(folder.iterdir()) == []
    assert not folder.exists()  # the server's own temporary folder goes at shutdown


# ---------------------------------------------------------------------------------------- uploads
def test_uploads_are_limited_sniffed_and_removed(built, encoder, tmp_path):
    root, index = built
    folder = tmp_path / "uploads"
    app = create_app(
        Index.open(index, encoder=encoder), upload_dir=folder, max_image_bytes=30_000, max_video_bytes=30_000
    )
    big = write_photo(tmp_path / "big.png", seed=5, size=(400, 300))
    assert big.stat().st_size > 30_000
    bomb = write_bomb_png(tmp_path / "bomb.png")
    not_image = tmp_path / "note.jpg"
    not_image.write_text("this is a text, not a JPEG")
    junk_png = tmp_path / "junk.png"
    junk_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)  # a PNG signature, then nothing readable
    damaged = write_damaged_mp4(tmp_path / "damaged.mp4")
    cases = [
        ("image", big, 413, "too_large"),
        ("image", bomb, 413, "too_large"),
        ("image", write_bomb_png(tmp_path / "warns.png", side=10_000), 413, "too_large"),  # above the warning level
        ("image", not_image, 415, "unsupported_media_type"),
        ("image", root / "clips/long.mp4", 415, "unsupported_media_type"),
        ("image", junk_png, 415, "unsupported_media_type"),
        ("video", root / "photos/small.jpg", 415, "unsupported_media_type"),
        ("video", not_image, 415, "unsupported_media_type"),
        ("video", damaged, 400, "bad_input"),
    ]
    with TestClient(app) as c:
        for field, path, status, kind in cases:
            with open(path, "rb") as fh:
                r = c.post("/search", files={field: (path.name, fh)}, data={"text": "x"})
            _assert_error(r, status, kind)
            assert list(folder.iterdir()) == [], (field, path)
        empty = c.post("/search", files={"image": ("e.png", b"")})
        _assert_error(empty, 400, "bad_input", "empty")
        whole = (root / "photos/small.jpg").read_bytes()
        r = c.post("/search", files={"image": ("q.jpg", whole), "video": ("v.mp4", whole)})
        _assert_error(r, 415)
        two = c.post("/search", files=[("image", ("a.jpg", whole)), ("image", ("b.jpg", whole))])
        _assert_error(two, 400, "bad_query", "one uploaded file")
        cut = c.post("/search", files={"image": ("q.jpg", whole[: len(whole) // 2])})  # decodes no further
        _assert_error(cut, 400, "bad_input", "the image upload: cannot read image")
        assert str(folder) not in cut.text  # the server's folders are its own business
        ok = c.post("/search", files={"image": ("q.jpg", whole)})
        assert ok.status_code == 200 and ok.json()["hits"][0]["path"] == "photos/small.jpg"
        huge = b"x" * 100_000
        r = c.post("/search", files={"image": ("big.jpg", huge), "video": ("big.mp4", huge)}, data={"text": "x"})
        _assert_error(r, 413, "too_large")
        assert list(folder.iterdir()) == []


# ------------------------------------------------------------------------ publishes and confinement
@pytest.fixture
def small(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=11)
    write_photo(root / "b.png", seed=12)
    index = tmp_path / "index"
    assert ingest(root, index, encoder=encoder).status == "ok"
    return root, index


def test_server_follows_a_publish(small, encoder):
    root, index = small
    with TestClient(create_app(Index.open(index, encoder=encoder))) as c:
        before = _search(c, text="x", target="image", k=10)["hits"]
        assert {h["path"] for h in before} == {"a.png", "b.png"}
        serial = c.get("/info").json()["serving_serial"]
        write_photo(root / "new/c.png", seed=13)
        assert ingest(root, index, encoder=encoder).status == "ok"
        after = _search(c, text="x", target="image", k=10)["hits"]
        assert {h["path"] for h in after} == {"a.png", "b.png", "new/c.png"}
        new = next(h for h in after if h["path"] == "new/c.png")
        assert c.get(new["media_url"]).content == (root / "new/c.png").read_bytes()
        assert c.get("/info").json()["serving_serial"] == serial + 1
        assert re.search(r"^unite_search_index_refreshes_total 1$", c.get("/metrics").text, re.M)
        assert re.search(r'^unite_search_index_rows\{shard="image"\} 3$', c.get("/metrics").text, re.M)


def test_media_and_thumbs_stay_inside_the_corpus(small, encoder, tmp_path):
    from unite_search.diskio import write_json
    from unite_search.tables import ShardTables

    root, index = small
    secret = tmp_path / "outside.png"
    write_photo(secret, seed=14)
    with TestClient(create_app(Index.open(index, encoder=encoder))) as c:
        hits = {h["path"]: h for h in _search(c, text="x", target="image", k=10)["hits"]}
        assert c.get(hits["b.png"]["media_url"]).status_code == 200
        # a symlink swapped in after ingest, leading out of the corpus
        (root / "b.png").unlink()
        (root / "b.png").symlink_to(secret)
        for url in (hits["b.png"]["media_url"], hits["b.png"]["thumb_url"]):
            _assert_error(c.get(url), 404, "not_found")
        assert c.get(hits["a.png"]["media_url"]).status_code == 200
        # rows whose stored path climbs out with '..', or is absolute (a damaged or tampered table)
        tables = ShardTables(index / "tables")
        row = c.get(f"/items/{quote(hits['a.png']['id'], safe='')}").json()
        tables.relabel("image", {row["unit"]: (("../outside.png",), None)})
        manifest = json.loads((index / "manifest.json").read_text())
        manifest["shards"]["image"]["version"] = tables.open("image").version
        manifest["serial"] += 1
        write_json(index / "manifest.json", manifest)
        assert c.get(f"/items/{quote(row['id'], safe='')}").json()["path"] == "../outside.png"
        for url in (hits["a.png"]["media_url"], hits["a.png"]["thumb_url"]):
            _assert_error(c.get(url), 404, "not_found")
        tables.relabel("image", {row["unit"]: ((str(secret),), None)})
        manifest["shards"]["image"]["version"] = tables.open("image").version
        manifest["serial"] += 1
        write_json(index / "manifest.json", manifest)
        assert c.get(f"/items/{quote(row['id'], safe='')}").json()["path"] == str(secret)
        _assert_error(c.get(hits["a.png"]["media_url"]), 404, "not_found")


def test_parse_range():
    assert parse_range(None, 10) is None and parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=-3", 10) == (7, 9) and parse_range(" bytes = 8 - ", 10) == (8, 9)
    assert parse_range("bytes=-", 10) is None and parse_range("bytes=4-2", 10) is None
    with pytest.raises(Exception, match="outside the file"):
        parse_range("bytes=0-", 0)
    zeros = "0" * 30  # leading zeros are allowed, and do not make a number large
    assert parse_range(f"bytes={zeros}1-{zeros}5", 10) == (1, 5) and parse_range(f"bytes=-{zeros}3", 10) == (7, 9)
    many = "9" * 5000  # past int()'s 4,300 digits: beyond any file, as a smaller huge number is
    assert parse_range(f"bytes=-{many}", 10) == (0, 9) and parse_range(f"bytes=0-{many}", 10) == (0, 9)
    with pytest.raises(Exception, match="outside the file"):
        parse_range(f"bytes={many}-", 10)


# -------------------------------------------------------------------------------------- Index hooks
def test_query_batch_takes_precomputed_vectors(built, encoder):
    idx = Index.open(built[1], encoder=encoder)
    queries = [{"text": "a red fox", "k": 5}, {"text": "x", "target": "text"}]
    vectors = list(encoder.encode([{"text": "a red fox"}, {"text": "x"}]))
    assert idx.query_batch(queries, vectors=vectors) == idx.query_batch(queries)
    mixed, encoded = idx.query_batch(queries, vectors=[vectors[0], None]), idx.query_batch(queries)
    assert [[h.id for h in hits] for hits in mixed] == [[h.id for h in hits] for hits in encoded]
    np.testing.assert_allclose([h.score for h in mixed[1]], [h.score for h in encoded[1]], atol=1e-5)
    with pytest.raises(PlanError, match="shape"):
        idx.query_batch(queries[:1], vectors=[np.zeros(3, np.float32)])
    with pytest.raises(PlanError, match="1 vector"):
        idx.query_batch(queries, vectors=vectors[:1])
    row_id = idx.query(text="x", target="image")[0].id
    with pytest.raises(PlanError, match="like="):
        idx.query_batch([{"like": row_id}], vectors=[vectors[0]])
    assert idx.row(row_id)["id"] == row_id and "vector" not in idx.row(row_id)
    assert idx.row("no-such-row") is None and idx.row("") is None


def test_metadata_an_older_version_stored_with_nan_is_answered_as_null(tmp_path, encoder, monkeypatch):
    """Ingest refuses NaN, Infinity and lone surrogates in a manifest now, but an index an older version built
    may hold them: every search answer holding such a row was a 500. They read as null and U+FFFD."""
    from unite_search import declared

    root = tmp_path / "corpus"
    root.mkdir()
    line = ('{"id": "odd", "text": "a reading", "metadata": {"score": NaN, "top": 1e999, "low": -Infinity, "ok": 2.5, '
            '"cut": "half \\udc00", "\\ud83d": ["\\ud83d\\ude00"]}}')  # fmt: skip
    (root / "items.jsonl").write_text(line + "\n")
    with monkeypatch.context() as m:  # what an older version stored
        m.setattr(declared, "_not_json", float)
        m.setattr(declared, "_finite", float)
        m.setattr(declared, "_lone_surrogate", lambda value, where: None)
        ingest(root, tmp_path / "index", encoder=encoder)
    index = Index.open(tmp_path / "index", encoder=encoder)
    assert "NaN" in index.row("odd")["metadata"]
    # and a lone surrogate as U+FFFD (UTF-8 has none: the answer failed to encode), a pair as its character
    expected = {"score": None, "top": None, "low": None, "ok": 2.5, "cut": "half \ufffd", "\ufffd": ["\U0001f600"]}
    assert index.query(text="a reading", target="text", k=1)[0].metadata == expected
    with TestClient(create_app(index, upload_dir=tmp_path / "up")) as c:
        assert _search(c, text="a reading", target="text", k=1)["hits"][0]["metadata"] == expected
