"""Index.query with the tiny model: self-retrieval, composed queries, filters, like=, edge cases."""

import json

import numpy as np
import pytest
from corpora import write_clip, write_photo

from unite_search import Index
from unite_search.ingestion import ingest
from unite_search.planner import PlanError
from unite_search.store import IndexMismatchError, IndexStore

OPTS = {"segment_seconds": 4.0, "segment_overlap": 1.0}


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("q") / "corpus"
    write_photo(root / "photos/big/wide.png", seed=1, size=(320, 200))
    write_photo(root / "photos/big/tall.png", seed=2, size=(200, 320))
    write_photo(root / "photos/small/a.png", seed=3, size=(64, 48))
    write_photo(root / "photos/small/b.jpg", seed=4, size=(80, 60))
    (root / "photos/small/a.txt").write_text("a small striped picture")
    write_clip(root / "clips/short.mp4", 16, fps=8, seed=1)
    write_clip(root / "clips/long.mp4", 80, fps=8, seed=2)  # 10 s: 3 segments
    (root / "notes").mkdir()
    (root / "notes/fox.txt").write_text("A red fox crossed the snowy road at dawn.")
    (root / "notes/sea.md").write_text("The sea was calm and grey all afternoon.")
    items = [{"id": "night", "image": "photos/big/wide.png", "text": "the same view at night"}]
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    index = root.parent / "index"
    report = ingest(root, index, encoder=encoder, **OPTS)
    assert report.status == "ok", report.summary()
    return root, index


@pytest.fixture
def idx(built, encoder):
    return Index.open(built[1], encoder=encoder)


def test_self_retrieval_text_image_video(built, idx):
    root, _ = built
    hits = idx.query(text="A red fox crossed the snowy road at dawn.", target="text")
    assert hits[0].path == "notes/fox.txt" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    hits = idx.query(image=root / "photos/small/b.jpg")
    assert hits[0].path == "photos/small/b.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.rank for h in hits] == [1, 2, 3, 4] and all(h.shard == "image" for h in hits)
    hits = idx.query(video=root / "clips/short.mp4")
    assert hits[0].path == "clips/short.mp4" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert (hits[0].start, hits[0].end) == (0.0, 2.0)


def test_hits_carry_segment_times_caption_and_metadata(built, idx):
    root, _ = built
    segs = [h for h in idx.query(text="moving colours", target="video") if h.path == "clips/long.mp4"]
    assert sorted((h.start, h.end) for h in segs) == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]
    a = next(h for h in idx.query(image=root / "photos/small/a.png") if h.path == "photos/small/a.png")
    assert a.caption == "a small striped picture"
    night = idx.query(text="x", target="image+text")[0]
    assert night.id == "night" and night.metadata is None and night.text == "the same view at night"


def test_composed_query_excludes_its_reference(built, idx):
    root, _ = built
    ref = root / "photos/big/wide.png"
    plain = idx.query(image=ref)
    assert plain[0].path == "photos/big/wide.png"
    composed = idx.query(image=ref, text="the same view at night")
    assert composed and "photos/big/wide.png" not in [h.path for h in composed]
    assert len(composed) == 3  # every other image still comes back
    video = idx.query(video=root / "clips/long.mp4", text="at night")  # all three segments share the hash
    assert [h.path for h in video] == ["clips/short.mp4"]
    # a manifest item built on the reference file is its row too: "night" is wide.png with a text
    assert idx.query(image=ref, text="the same view at night", target="image+text") == []
    assert [h.id for h in idx.query(image=root / "photos/small/a.png", text="x", target="image+text")] == ["night"]
    # an image and a video given together: both references are left out
    both = idx.query(image=ref, video=root / "clips/short.mp4", text="x", target=["image", "video"], k=20)
    assert {h.path for h in both} == {
        "photos/big/tall.png",
        "photos/small/a.png",
        "photos/small/b.jpg",
        "clips/long.mp4",
    }


def test_where_filters_before_the_k_cut(built, idx):
    root, _ = built
    unfiltered = idx.query(image=root / "photos/small/a.png", k=2)
    assert any(h.row["width"] < 200 for h in unfiltered)  # so the filter has something to remove
    hits = idx.query(image=root / "photos/small/a.png", k=2, where="width >= 200")
    assert len(hits) == 2 and {h.path for h in hits} == {"photos/big/wide.png", "photos/big/tall.png"}
    hits = idx.query(text="x", target="image", where="path LIKE 'photos/small/%'", k=10)
    assert {h.path for h in hits} == {"photos/small/a.png", "photos/small/b.jpg"}
    assert idx.query(text="x", target="image", where="width > 100000") == []
    with pytest.raises(PlanError, match="invalid where filter"):
        idx.query(text="x", target="image", where="no_such_column = 3")


def test_like_reuses_the_stored_vector_without_the_model(built, encoder):
    root, index = built
    lazy = Index.open(index)
    image_id = lazy.query(like=_id_of(lazy, "photos/big/tall.png"), k=10)
    assert lazy._encoder is None  # no model was loaded
    assert "photos/big/tall.png" not in [h.path for h in image_id]
    by_query = Index.open(index, encoder=encoder).query(image=root / "photos/big/tall.png")[1:]
    assert [h.id for h in image_id] == [h.id for h in by_query]
    np.testing.assert_allclose([h.score for h in image_id], [h.score for h in by_query], atol=1e-5)
    seg = lazy.query(like=next(h.id for h in lazy.query(like=_id_of(lazy, "clips/short.mp4"))), k=5)
    assert all(h.shard == "video" for h in seg)


def _id_of(index: Index, path: str) -> str:
    """A row id read from the published table (no query, so no model)."""
    table = index._snapshot.readers["image" if path.endswith((".png", ".jpg")) else "video"].table()
    return table.search().where(f"path = '{path}'").select(["id"]).limit(1).to_arrow().column("id")[0].as_py()


def test_text_query_fuses_media_shards(idx):
    hits = idx.query(text="a red fox in the snow", k=20)
    assert {h.shard for h in hits} == {"image", "video"}
    fused = [h.fused for h in hits]
    assert fused == sorted(fused, reverse=True)
    for shard in ("image", "video"):  # each shard keeps its own cosine order
        scores = [h.score for h in hits if h.shard == shard]
        assert scores == sorted(scores, reverse=True)
    assert len(hits) == 4 + 4  # every image and every video row (1 short + 3 segments)


def test_k_larger_than_the_shard_and_exclude(idx, built):
    root, _ = built
    hits = idx.query(image=root / "photos/small/a.png", k=50)
    assert len(hits) == 4 and [h.rank for h in hits] == [1, 2, 3, 4]
    hits = idx.query(image=root / "photos/small/a.png", k=50, exclude=[hits[0].id, hits[1].id])
    assert len(hits) == 2


def test_query_batch_shares_one_encoder_call(idx, built, monkeypatch):
    root, _ = built
    queries = [
        {"text": "a red fox", "target": "text"},
        {"image": root / "photos/small/b.jpg", "k": 2},
        {"video": root / "clips/short.mp4", "text": "at night"},
    ]
    single = [idx.query(**q) for q in queries]
    calls = []
    real = idx.encoder.encode
    monkeypatch.setattr(idx.encoder, "encode", lambda items, **kw: calls.append(len(items)) or real(items, **kw))
    batched = idx.query_batch(queries)
    assert calls == [3]
    for a, b in zip(single, batched, strict=True):
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    with pytest.raises(PlanError, match="unknown key"):
        idx.query_batch([{"txt": "typo"}])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"where": "width > 0; width > 100000"}, "no ';'"),  # LanceDB alone would return every row
        ({"where": "width > 100000 junk junk"}, "unexpected 'junk'"),  # and LanceDB alone would accept this
        ({"where": "width"}, "must be a condition"),
        ({"where": "no_such_column = 3"}, "unknown column"),
        ({"exclude": [123]}, "exclude= takes row ids"),
        ({"exclude": 123}, "exclude= takes row ids"),
        ({"target": 5}, "target is a shard name"),
        ({"k": "3"}, "k must be a positive integer"),
        ({"instruction": 7}, "instruction must be a non-empty string"),
        ({"image": 3.5}, "image must be a file path"),
        ({"like": 12}, "like= takes a row id"),
    ],
)
def test_bad_query_arguments_are_plan_errors_naming_them(idx, args, message):
    query = {"text": "x", "target": "image", **args}
    if "like" in args:
        query.pop("text")
    with pytest.raises(PlanError, match=message):
        idx.query(**query)
    with pytest.raises(PlanError, match=message):
        idx.plan(**query)  # the plan refuses them too, before any model or search


def test_exclude_takes_one_id_or_many(idx, built):
    root, _ = built
    hits = idx.query(image=root / "photos/small/a.png", k=50)
    assert [h.id for h in idx.query(image=root / "photos/small/a.png", k=50, exclude=hits[0].id)] == [
        h.id for h in hits[1:]
    ]


def test_unknown_target_and_missing_shard(idx):
    with pytest.raises(PlanError, match="unknown target 'audio'"):
        idx.query(text="x", target="audio")
    with pytest.raises(PlanError, match="no video\\+text shard"):
        idx.query(text="x", target="video+text")


def test_mismatched_model_is_refused(built, tiny_dir, tmp_path):
    from unite_search import Encoder, EncoderSettings
    from unite_search.testing import tiny_model

    _, index = built
    other = Encoder.load(tiny_model(tmp_path / "other", seed=1), device="cpu")
    with pytest.raises(IndexMismatchError, match=r"encoder\.revision(.|\n)*Index\.open without model="):
        Index.open(index, encoder=other)
    lazy = Index.open(index, model=tmp_path / "other", device="cpu")
    with pytest.raises(IndexMismatchError, match=r"encoder\.revision"):
        lazy.query(text="x")
    settings = Encoder.load(tiny_dir, device="cpu", settings=EncoderSettings(fps=2.0))
    with pytest.raises(IndexMismatchError, match=r"encoder\.fps"):
        Index.open(index, encoder=settings)


def test_index_loads_its_own_model_lazily(built):
    _, index = built
    lazy = Index.open(index, device="cpu")
    assert lazy._encoder is None
    assert lazy.plan(text="x").shards == ("image", "video")  # planning needs no model
    assert lazy.query(text="A red fox crossed the snowy road at dawn.", target="text")[0].path == "notes/fox.txt"
    assert lazy._encoder is not None and lazy.encoder.settings["revision"] == lazy.manifest["encoder"]["revision"]


def test_empty_shards_and_refresh(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    opened = Index.open(index, encoder=encoder)
    assert len(opened.query(image=root / "a.png")) == 1
    (root / "a.png").unlink()
    write_photo(root / "b.png", seed=2)
    write_photo(root / "c.png", seed=3)
    ingest(root, index, encoder=encoder)
    assert [h.path for h in opened.query(text="x", target="image")] == ["a.png"]  # the state it opened
    opened.refresh()
    assert sorted(h.path for h in opened.query(text="x", target="image")) == ["b.png", "c.png"]
    for p in ("b.png", "c.png"):
        (root / p).unlink()
    ingest(root, index, encoder=encoder)
    opened.refresh()
    assert opened.shards == {"image": 0}
    assert opened.query(text="x", target="image") == []


def test_ivf_shard_with_a_selective_filter_still_returns_k(tmp_path):
    """IVF probes few lists; a filter that keeps 3% of the rows must still give k exact results."""
    from unite_search.schema import row_key
    from unite_search.store import IndexStore

    dim, n = 32, 3000
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(30, dim))
    vecs = (centers[rng.integers(0, 30, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    widths = rng.integers(0, 1000, n)
    store = IndexStore(tmp_path / "index")
    manifest = store.init({"dim": dim, "model_id": "m", "revision": "r"}, {}, "/corpus")
    rows = [{"id": f"r{i}", "key": row_key(f"r{i}"), "unit": f"r{i}", "unit_rows": 1, "modality": "image",
             "path": f"p/{i}.jpg", "width": int(widths[i])} for i in range(n)]  # fmt: skip
    store.tables.add_rows("image", rows, vecs)
    manifest = store.publish(manifest, ["image"], flat_max=1000)
    assert manifest["shards"]["image"]["index"]["type"] == "ivf"
    idx = Index.open(tmp_path / "index")
    allowed = np.flatnonzero(widths < 30)
    assert 40 < allowed.size < 150
    for q in (0, 1, 2, 3):
        hits = idx.query(like=f"r{q}", where="width < 30", k=25)
        assert len(hits) == 25 and all(h.row["width"] < 30 for h in hits)
        candidates = allowed[allowed != q]
        exact = candidates[np.argsort(-(vecs[candidates] @ vecs[q]), kind="stable")][:25]
        assert [h.id for h in hits] == [f"r{i}" for i in exact]
    plain = idx.query(like="r0", k=10)
    assert len(plain) == 10 and "r0" not in [h.id for h in plain]


@pytest.mark.parametrize("flat_max", [100_000, 1000])
def test_like_reads_the_stored_vector_from_faiss_bit_for_bit(tmp_path, flat_max):
    """like= takes the row's vector from the FAISS index in memory (flat or IVF), equal to the table's copy,
    without reading the table."""
    from unite_search.reader import Snapshot
    from unite_search.schema import row_key
    from unite_search.store import IndexStore

    dim, n = 16, 2000
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = IndexStore(tmp_path / "index")
    manifest = store.init({"dim": dim, "model_id": "m", "revision": "r"}, {}, "/corpus")
    rows = [{"id": f"r{i}", "key": row_key(f"r{i}"), "unit": f"r{i}", "unit_rows": 1, "modality": "image"}
            for i in range(n)]  # fmt: skip
    store.tables.add_rows("image", rows, vecs)
    manifest = store.publish(manifest, ["image"], flat_max=flat_max)
    assert manifest["shards"]["image"]["index"]["type"] == ("flat" if flat_max > n else "ivf")
    reader = Snapshot.open(tmp_path / "index").readers["image"]
    stored = store.tables.read("image", manifest["shards"]["image"]["version"], ["key", "vector"])
    table_vecs = np.stack(stored.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    reader.meta()
    reader.table = lambda: pytest.fail("like= read the table")  # the lookup stays in memory
    for key, want in zip(stored.column("key").to_pylist(), table_vecs, strict=True):
        got = reader.vector(key)
        assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    assert reader.vector(row_key("not-a-row")) is None
    coded = Snapshot.open(tmp_path / "index").readers["image"]  # a kind that keeps codes: the table's copy
    coded.entry = {**coded.entry, "index": {**coded.entry["index"], "factory": "IVF16,SQ8"}}
    coded.index = lambda: pytest.fail("an index of codes was asked for a vector")
    assert coded.vector(key).tobytes() == want.tobytes()


def test_concurrent_queries_on_a_fresh_index(built, encoder):
    """Lazy loads (tables, FAISS, metadata) happen once however many threads query first."""
    from concurrent.futures import ThreadPoolExecutor

    root, index = built
    queries = [{"image": root / "photos/small/a.png"}, {"video": root / "clips/short.mp4"},
               {"text": "a red fox", "target": "text"}, {"text": "bars", "target": ["image", "video"]}] * 3  # fmt: skip
    expected = [[h.id for h in Index.open(index, encoder=encoder).query(**q)] for q in queries]
    fresh = Index.open(index, encoder=encoder)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: [h.id for h in fresh.query(**q)], queries))
    assert got == expected


@pytest.mark.parametrize("memory_rows", [1_000_000, 0])
def test_search_fetches_what_it_does_not_hold_for_its_hits(tmp_path, encoder, monkeypatch, memory_rows):
    """Up to MEMORY_ROWS rows: small columns held, text/caption/metadata fetched for hits; above: a key
    map and a bounded cache of rows fetched for hits."""
    import unite_search.reader as readers

    monkeypatch.setattr(readers, "ROW_CACHE", 3)
    monkeypatch.setattr(readers, "MEMORY_ROWS", memory_rows)
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    long_text = "The harbour at dawn, gulls over the water. " * 100
    (root / "notes/harbour.txt").write_text(long_text)
    (root / "notes/fox.txt").write_text("A red fox crossed the snowy road.")
    write_photo(root / "a.png", seed=1)
    (root / "a.txt").write_text("a striped picture")
    items = [{"id": "m1", "image": "a.png", "text": "at night", "metadata": {"split": "test", "n": 3}}]
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    ingest(root, tmp_path / "index", encoder=encoder, passage_chars=2000)
    idx = Index.open(tmp_path / "index", encoder=encoder)
    hits = idx.query(text="harbour", target="text", k=10)
    reader = idx._snapshot.readers["text"]
    assert len(hits) == reader.rows > 3
    if memory_rows:
        assert not {"text", "caption", "metadata"} & set(reader.meta().table.column_names)  # not held for all
        assert not reader._rows
    else:
        assert reader.meta().table is None and len(reader._rows) == 3  # the cache keeps 3 of the hits' rows
    by_path = {h.path: h for h in hits}
    first = by_path["notes/harbour.txt"]
    assert first.text == long_text[first.row["char_start"] : first.row["char_end"]]
    assert by_path["notes/fox.txt"].text == "A red fox crossed the snowy road."
    image = idx.query(text="x", target="image")[0]
    assert image.caption == "a striped picture" and image.text is None
    composed = idx.query(text="x", target="image+text")[0]
    assert composed.metadata == {"split": "test", "n": 3} and composed.text == "at night"


@pytest.mark.parametrize("flat_max", [100_000, 1000])
def test_leaving_a_few_rows_out_by_a_longer_top_k_gives_the_selectors_answer(tmp_path, flat_max, monkeypatch):
    """exclude= and like='s own row drop a few ids from a top k + e; it must equal FAISS's selector."""
    import unite_search.reader as readers
    from unite_search.reader import Snapshot
    from unite_search.schema import row_key
    from unite_search.store import IndexStore

    dim, n = 16, 3000
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(20, dim))
    vecs = (centers[rng.integers(0, 20, n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = IndexStore(tmp_path / "index")
    manifest = store.init({"dim": dim, "model_id": "m", "revision": "r"}, {}, "/corpus")
    keys = [row_key(f"r{i}") for i in range(n)]
    rows = [{"id": f"r{i}", "key": keys[i], "unit": f"r{i}", "unit_rows": 1, "modality": "image"} for i in range(n)]
    store.tables.add_rows("image", rows, vecs)
    store.publish(manifest, ["image"], flat_max=flat_max)
    reader = Snapshot.open(tmp_path / "index").readers["image"]
    for q in range(6):
        near = np.argsort(-(vecs @ vecs[q]))[: 3 + q]  # the query's own row and its nearest neighbours
        excluded = {keys[i] for i in near} | {row_key("not-in-this-shard")}
        fast = reader.search(vecs[q], 10, allowed=None, excluded=excluded)
        monkeypatch.setattr(readers, "POST_FILTER_MAX", 0)
        with_selector = reader.search(vecs[q], 10, allowed=None, excluded=excluded)
        monkeypatch.undo()
        assert [k for k, _ in fast] == [k for k, _ in with_selector] and len(fast) == 10
        assert not excluded & {k for k, _ in fast}
        if flat_max > n:  # exact search: the brute-force answer
            order = [i for i in np.argsort(-(vecs @ vecs[q]), kind="stable") if keys[i] not in excluded][:10]
            assert [k for k, _ in fast] == [keys[i] for i in order]


def test_an_index_an_earlier_version_built_is_called_outdated(built, encoder, tmp_path):
    """An index recording no text/video rules (before 11-27) is refused as outdated, not as "another model":
    with a rebuild to do, not a model to pass. Its files are intact, and like= (stored vectors only) works."""
    import shutil

    from click.testing import CliRunner

    from unite_search.cli import main
    from unite_search.verify import verify

    root, index = built
    old = shutil.copytree(index, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["encoder"]["text_ends"], manifest["encoder"]["video_resize"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    said = r"built by an earlier version of unite-search(.|\n)*no text_ends or video_resize(.|\n)*rm -r"
    with pytest.raises(IndexMismatchError, match=said) as refused:
        Index.open(old, encoder=encoder)
    assert "another model" not in str(refused.value) and "model=" not in str(refused.value)
    lazy = Index.open(old, device="cpu")
    photo = IndexStore(old).read_rows("image", ["id", "path"]).to_pylist()[0]
    hits = lazy.query(like=photo["id"], k=10)
    assert len(hits) == 3 and photo["path"] not in {h.path for h in hits} and lazy._encoder is None
    with pytest.raises(IndexMismatchError, match=said):
        lazy.query(text="a fox")
    with pytest.raises(IndexMismatchError, match=said):
        ingest(root, old, encoder=encoder, **OPTS)
    checked = verify(old)
    assert not checked.damaged and "earlier version" in checked.outdated
    shown = CliRunner().invoke(main, ["info", str(old)])
    assert shown.exit_code == 0 and "OUTDATED built by an earlier version" in shown.output
    shown = CliRunner().invoke(main, ["info", str(index), "--json"])
    assert json.loads(shown.output)["outdated"] is None


def test_a_where_filter_is_found_once_per_pinned_state_and_like_keeps_to_it(built, encoder, monkeypatch):
    """A filtered query scanned the table, sorted the keys and built a FAISS selector every time (191 ms p50
    at 100k rows); the reader now keeps what a filter matches, least recently used forgotten first."""
    from unite_search import reader as reader_module

    _, index = built
    scans = []
    real = reader_module.ShardReader.keys_where
    monkeypatch.setattr(reader_module.ShardReader, "keys_where", lambda self, p: scans.append(p) or real(self, p))
    monkeypatch.setattr(reader_module, "FILTER_CACHE", 2)
    idx = Index.open(index, encoder=encoder)
    wide = next(h for h in idx.query(text="x", target="image", k=10) if h.path == "photos/big/wide.png")
    first = idx.query(text="a photo", target="image", where="width > 100", k=10)
    assert sorted(h.path for h in first) == ["photos/big/tall.png", "photos/big/wide.png"] and len(scans) == 1
    assert [(h.id, h.score) for h in idx.query(text="a photo", target="image", where="width > 100", k=10)] == [
        (h.id, h.score) for h in first
    ]
    like = idx.query(like=wide.id, where="width > 100", k=10)  # its own row left out, the filter kept
    assert [h.path for h in like] == ["photos/big/tall.png"] and len(scans) == 1
    for where in ("width < 100", "height > 100", "width > 100"):  # two kept: the first is forgotten, found again
        idx.query(text="a photo", target="image", where=where, k=10)
    assert scans == ["width > 100", "width < 100", "height > 100", "width > 100"]
    idx.refresh()  # another pinned state (here the same one, read again): its own filters
    idx.query(text="a photo", target="image", where="width > 100", k=10)
    assert len(scans) == 5
