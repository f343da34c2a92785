"""Incremental publish: a published shard's FAISS index is updated with the rows its table gained and
lost, and rebuilt only when the rule says (size limits, growth past the training size, recall on the
new rows under target, a damaged file)."""

import faiss
import numpy as np
import pytest
from test_ann import clustered, stream

from unite_search import ann
from unite_search import manifest as manifests
from unite_search.reader import Snapshot
from unite_search.schema import row_key
from unite_search.store import IndexStore


def rows_for(names):
    return [{"id": n, "key": row_key(n), "unit": f"u-{n}", "unit_rows": 1, "modality": "text"} for n in names]


def new_store(tmp_path, dim=32):
    store = IndexStore(tmp_path / "index")
    return store, store.init({"dim": dim, "model_id": "m", "revision": "r"}, {}, "/corpus")


def table_state(store, version):
    got = store.tables.read("text", version, ["key", "vector"])
    keys = got.column("key").to_numpy().astype(np.int64)
    vecs = np.asarray(got.column("vector").combine_chunks().flatten().to_numpy(), np.float32).reshape(len(keys), -1)
    return keys, vecs


def brute_top(keys, vecs, queries, k):
    return keys[np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]]


@pytest.fixture
def ivf_shard(tmp_path):
    """A published IVF shard of 2,500 clustered rows (flat_max 1,000)."""
    store, manifest = new_store(tmp_path)
    vecs = clustered(4000)
    names = [f"r{i}" for i in range(4000)]
    store.tables.add_rows("text", rows_for(names[:2500]), vecs[:2500])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    return store, manifest, names, vecs


def test_ids_lists_every_id_of_both_index_kinds():
    vecs = clustered(3000)
    keys = np.arange(3000, dtype=np.int64) * 7 + 3
    flat, _ = ann.build(stream(keys, vecs), 3000, 32, flat_max=5000)
    ivf, _ = ann.build(stream(keys, vecs), 3000, 32, flat_max=1000)
    assert isinstance(flat, faiss.IndexIDMap2) and not isinstance(ivf, faiss.IndexIDMap2)
    for index in (flat, ivf):
        np.testing.assert_array_equal(np.sort(ann.ids(index)), keys)


def test_an_ivf_shard_is_updated_in_place_not_retrained(ivf_shard):
    store, manifest, names, vecs = ivf_shard
    first = manifest["shards"]["text"]
    assert first["index"]["built"] == "full" and first["index"]["rebuild_reason"] == "a new shard"
    assert first["index"]["trained_rows"] == 2500
    before = Snapshot.open(store.path).readers["text"].index()
    store.tables.add_rows("text", rows_for(names[2500:2700]), vecs[2500:2700])
    assert store.tables.delete_units("text", [f"u-r{i}" for i in range(0, 150)]) == 150
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    entry = manifest["shards"]["text"]
    info = entry["index"]
    assert info["built"] == "updated" and "rebuild_reason" not in info
    assert info["last_update"] == {"added": 200, "removed": 150}
    assert info["since_training"] == {"publishes": 1, "added": 200, "removed": 150}
    assert info["trained_at"] == first["index"]["trained_at"] and info["nprobe"] == first["index"]["nprobe"]
    assert (
        info["fresh_recall"]["queries"] == ann.FRESH_QUERIES
        and info["fresh_recall"]["recall_at_10"] >= ann.TARGET_RECALL
    )
    assert entry["rows"] == 2550 and entry["faiss"] != first["faiss"]
    after = Snapshot.open(store.path).readers["text"].index()
    # the same trained quantizer: the centroids did not move
    centroids = [faiss.rev_swig_ptr(faiss.downcast_index(i.quantizer).get_xb(), i.nlist * 32) for i in (before, after)]
    np.testing.assert_array_equal(*centroids)
    keys, table_vecs = table_state(store, entry["version"])
    np.testing.assert_array_equal(np.sort(ann.ids(after)), np.sort(keys))  # exactly the table's rows
    ids, stored = ann.stored(after)
    order = np.argsort(ids)
    np.testing.assert_array_equal(stored[order], table_vecs[np.argsort(keys)])  # and their vectors, bit for bit
    # every new row is found as its own nearest neighbour; removed rows are never found
    _, found = after.search(vecs[2500:2700], 1)
    assert found[:, 0].tolist() == [row_key(n) for n in names[2500:2700]]
    _, found = after.search(vecs[:150], 10)
    assert not set(found.ravel().tolist()) & {row_key(n) for n in names[:150]}


def test_a_flat_shard_is_updated_and_stays_exact(tmp_path):
    store, manifest = new_store(tmp_path)
    vecs = clustered(1200)
    names = [f"f{i}" for i in range(1200)]
    store.tables.add_rows("text", rows_for(names[:800]), vecs[:800])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    store.tables.add_rows("text", rows_for(names[800:1000]), vecs[800:1000])
    store.tables.delete_units("text", [f"u-f{i}" for i in range(100, 400)])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    entry = manifest["shards"]["text"]
    assert entry["index"]["type"] == "flat" and entry["index"]["built"] == "updated" and entry["rows"] == 700
    assert entry["index"]["last_update"] == {"added": 200, "removed": 300} and "fresh_recall" not in entry["index"]
    index = Snapshot.open(store.path).readers["text"].index()
    keys, table_vecs = table_state(store, entry["version"])
    queries = clustered(40, noise_seed=3)
    _, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, brute_top(keys, table_vecs, queries, 10))


def test_growing_past_the_factor_retrains(ivf_shard):
    store, manifest, _, _ = ivf_shard
    extra = clustered(2600, noise_seed=4)
    store.tables.add_rows("text", rows_for([f"g{i}" for i in range(2600)]), extra)
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    info = manifest["shards"]["text"]["index"]
    assert info["built"] == "full" and "past 2x the 2500" in info["rebuild_reason"]
    assert info["trained_rows"] == 5100 and info["nlist"] == ann.nlist_for(5100)
    assert "since_training" not in info


def test_crossing_the_exact_limit_rebuilds_both_ways(tmp_path):
    store, manifest = new_store(tmp_path)
    vecs = clustered(1400)
    names = [f"c{i}" for i in range(1400)]
    store.tables.add_rows("text", rows_for(names[:900]), vecs[:900])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    assert manifest["shards"]["text"]["index"]["type"] == "flat"
    store.tables.add_rows("text", rows_for(names[900:]), vecs[900:])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    info = manifest["shards"]["text"]["index"]
    assert info["type"] == "ivf" and info["built"] == "full"
    assert "above the exact-search limit" in info["rebuild_reason"]
    store.tables.delete_units("text", [f"u-c{i}" for i in range(500)])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    info = manifest["shards"]["text"]["index"]
    assert info["type"] == "flat" and "within the exact-search limit" in info["rebuild_reason"]


def test_recall_on_new_rows_under_target_retrains(ivf_shard, monkeypatch):
    store, manifest, names, vecs = ivf_shard
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    monkeypatch.setattr(ann, "DELTA_MAX", 0)  # rewrite the base (where the recall is checked), no delta
    monkeypatch.setattr(ann, "TARGET_RECALL", 1.01)  # no recall reaches it: the check must send it to a rebuild
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    info = manifest["shards"]["text"]["index"]
    assert info["built"] == "full" and f"recall@10 on {ann.FRESH_QUERIES} newly added rows" in info["rebuild_reason"]


def test_fresh_recall_is_measured_against_brute_force():
    vecs = clustered(3000)
    keys = np.arange(3000, dtype=np.int64) + 5
    index, _ = ann.build(stream(keys, vecs), 3000, 32, flat_max=1000)
    queries, query_keys = vecs[:100], keys[:100]
    got = ann.fresh_recall(index, queries, query_keys, nprobe=1)
    truth = brute_top(keys, vecs, queries, 11)[:, 1:]  # each query's own row first: left out
    _, found = index.search(queries, 11, params=faiss.SearchParametersIVF(nprobe=1))
    found = np.array([[k for k in row if k != q][:10] for row, q in zip(found, query_keys, strict=True)])
    assert got == pytest.approx(ann.recall_at_k(found, truth))
    assert got < ann.fresh_recall(index, queries, query_keys, nprobe=index.nlist) == 1.0


def test_few_new_rows_are_added_without_a_recall_check(ivf_shard, monkeypatch):
    monkeypatch.setattr(ann, "DELTA_MAX", 0)
    store, manifest, names, vecs = ivf_shard
    store.tables.add_rows("text", rows_for(names[2500:2510]), vecs[2500:2510])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    info = manifest["shards"]["text"]["index"]
    assert info["built"] == "updated" and info["last_update"]["added"] == 10 and "fresh_recall" not in info


def test_a_damaged_previous_file_is_rebuilt_not_updated(ivf_shard):
    store, manifest, names, vecs = ivf_shard
    path = store.path / manifest["shards"]["text"]["faiss"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    info = manifest["shards"]["text"]["index"]
    assert info["built"] == "full" and "sha256" in info["rebuild_reason"]


def test_a_crash_before_the_manifest_swap_leaves_the_published_state(ivf_shard, monkeypatch):
    store, manifest, names, vecs = ivf_shard
    published = store.require_manifest()
    store.tables.add_rows("text", rows_for(names[2500:2700]), vecs[2500:2700])

    def crash(*args, **kwargs):
        raise OSError("killed between the FAISS write and the manifest swap")

    monkeypatch.setattr(manifests, "write", crash)
    with pytest.raises(OSError, match="killed"):
        store.publish(manifest, ["text"], flat_max=1000)
    monkeypatch.undo()
    assert store.require_manifest() == published
    reader = Snapshot.open(store.path).readers["text"]
    assert reader.index().ntotal == 2500  # the old file, checked against its sha256 on load
    assert reader.rows == 2500 and len(reader.offsets([row_key(names[2600])])) == 1
    assert reader.offsets([row_key(names[2600])])[0] == -1  # the unpublished rows are not visible
    manifest = store.publish(published, ["text"], flat_max=1000)  # the next run publishes them, as a delta
    assert manifest["shards"]["text"]["rows"] == 2700 and manifest["shards"]["text"]["index"]["built"] == "delta"


def test_info_says_an_index_was_updated_since_it_was_built(ivf_shard):
    from click.testing import CliRunner

    from unite_search.cli import main

    store, manifest, names, vecs = ivf_shard
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    store.publish(manifest, ["text"], flat_max=1000)
    result = CliRunner().invoke(main, ["info", str(store.path)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("shard"))
    assert f"2600 rows  IVF{ann.nlist_for(2500)},Flat nprobe" in line and "+100 -0 rows beside its base file" in line


def test_info_says_when_the_recall_target_was_not_reached():
    from unite_search.cli.index import _index_words

    idx = {"type": "ivf", "factory": "IVF692,PQ4", "nprobe": 692, "rerank": 10, "recall_target": 0.95}
    assert _index_words({**idx, "recall_at_10": 0.8109}).startswith(
        "IVF692,PQ4 nprobe 692, top 100 re-ranked (recall@10 0.8109, under its 0.95 target even with every list probed)"
    )
    assert _index_words({**idx, "recall_at_10": 0.96}) == "IVF692,PQ4 nprobe 692, top 100 re-ranked (recall@10 0.96)"


def test_the_sha256_recorded_is_the_written_files(ivf_shard):
    from unite_search.diskio import file_sha256

    store, manifest, names, vecs = ivf_shard
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    for entry in (manifest["shards"]["text"], *manifest["history"][0]["shards"].values()):
        assert entry["faiss_sha256"] == file_sha256(store.path / entry["faiss"])


def test_a_large_table_is_compacted_only_when_it_is_worth_it(tmp_path, monkeypatch):
    from unite_search import tables

    monkeypatch.setattr(tables, "COMPACT_ALWAYS_ROWS", 1000)  # "large" from 1,000 rows
    monkeypatch.setattr(tables, "COMPACT_FRAGMENTS", 3)
    store, manifest = new_store(tmp_path)
    vecs = clustered(3000)
    names = [f"p{i}" for i in range(3000)]
    store.tables.add_rows("text", rows_for(names[:1500]), vecs[:1500])
    manifest = store.publish(manifest, ["text"], flat_max=5000)
    frags = lambda: store.tables.open("text").stats()["fragment_stats"]["num_fragments"]  # noqa: E731
    assert frags() == 1
    for i in range(2):  # two small appends (3 fragments): left as they are, no rewrite of 1,500 rows each time
        store.tables.add_rows(
            "text", rows_for(names[1500 + 100 * i : 1600 + 100 * i]), vecs[1500 + 100 * i : 1600 + 100 * i]
        )
        version = store.tables.open("text").version
        manifest = store.publish(manifest, ["text"], flat_max=5000)
        assert manifest["shards"]["text"]["version"] == version and frags() == 2 + i
    store.tables.add_rows("text", rows_for(names[1800:1900]), vecs[1800:1900])
    manifest = store.publish(manifest, ["text"], flat_max=5000)  # a fourth fragment, over 3: now compacted
    assert frags() == 1 and manifest["shards"]["text"]["rows"] == 1800
    keys, _ = table_state(store, manifest["shards"]["text"]["version"])
    assert sorted(keys.tolist()) == sorted(r["key"] for r in rows_for(names[:1700] + names[1800:1900]))
    store.tables.delete_units("text", [f"u-p{i}" for i in range(200)])  # a tenth of the rows deleted: compacted
    manifest = store.publish(manifest, ["text"], flat_max=5000)
    table = store.tables.open("text")
    latest = max(table.list_versions(), key=lambda v: v["version"])["metadata"]
    assert latest["total_deletion_file_rows"] == "0" and latest["total_rows"] == "1600"  # rewritten without them
    assert manifest["shards"]["text"]["rows"] == 1600


def test_which_kinds_store_their_vectors():
    vecs = clustered(3000)
    keys = np.arange(3000, dtype=np.int64)
    flat, _ = ann.build(stream(keys, vecs), 3000, 32, flat_max=5000)
    ivf, _ = ann.build(stream(keys, vecs), 3000, 32, flat_max=1000)
    sq8, _ = ann.build(stream(keys, vecs), 3000, 32, flat_max=1000, memory=ann.index_bytes("flat", 3000, 32, 1) - 1)
    assert [ann.stores_vectors(i) for i in (flat, ivf, sq8)] == [True, True, False]


def test_a_delta_publish_leaves_the_base_file_and_writes_the_changes_beside_it(ivf_shard, monkeypatch):
    monkeypatch.setattr(manifests, "KEEP_RECENT_SECONDS", 0)  # keep the current and previous states only
    store, manifest, names, vecs = ivf_shard
    first = manifest["shards"]["text"]
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    store.tables.delete_units("text", [f"u-r{i}" for i in range(50)])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    entry = manifest["shards"]["text"]
    assert entry["index"]["built"] == "delta" and entry["index"]["delta"] == {"added": 100, "removed": 50, "kept": 0}
    assert entry["faiss"] == first["faiss"] and entry["faiss_sha256"] == first["faiss_sha256"]  # base untouched
    assert entry["rows"] == 2550 and entry["base_rows"] == 2500
    assert (store.path / entry["delta"]["faiss"]).is_file() and (store.path / entry["removed"]["faiss"]).is_file()
    reader = Snapshot.open(store.path).readers["text"]
    new_keys = [row_key(n) for n in names[2500:2600]]
    gone = {row_key(n) for n in names[:50]}
    assert [reader.search(v, 1, allowed=None, excluded=set())[0][0] for v in vecs[2500:2600]] == new_keys
    for v in vecs[:50]:  # a removed row is never found, whatever the query and filter
        assert not {k for k, _ in reader.search(v, 20, allowed=None, excluded=set())} & gone
        assert not {k for k, _ in reader.search(v, 20, allowed=None, excluded=set(range(100)))} & gone
    allowed = np.array(sorted(gone | set(new_keys[:5])), dtype=np.int64)
    hits = reader.search(vecs[0], 10, allowed=allowed, excluded=set())
    assert sorted(k for k, _ in hits) == sorted(new_keys[:5])  # exactly the live rows the filter allows
    np.testing.assert_array_equal(reader.vector(new_keys[7]), vecs[2507])  # like= on a delta row, bit for bit
    keys, table_vecs = table_state(store, entry["version"])
    queries = clustered(100, noise_seed=6)
    found = [[k for k, _ in reader.search(q, 10, allowed=None, excluded=set())] for q in queries]
    assert ann.recall_at_k(np.array(found), brute_top(keys, table_vecs, queries, 10)) >= 0.93
    assert not verify_damaged(store)
    # a second delta publish: the changes are counted from the base file, the first delta's files go
    store.tables.add_rows("text", rows_for(names[2600:2650]), vecs[2600:2650])
    second = store.publish(manifest, ["text"], flat_max=1000)["shards"]["text"]
    assert second["index"]["delta"] == {"added": 150, "removed": 50, "kept": 100} and second["faiss"] == first["faiss"]
    assert (store.path / entry["delta"]["faiss"]).is_file()  # the previous state's files stay for its readers
    store.tables.add_rows("text", rows_for(names[2650:2660]), vecs[2650:2660])
    store.publish(store.require_manifest(), ["text"], flat_max=1000)
    assert not (store.path / entry["delta"]["faiss"]).exists() and not (store.path / entry["removed"]["faiss"]).exists()
    assert (store.path / first["faiss"]).is_file() and (store.path / second["delta"]["faiss"]).is_file()


def verify_damaged(store):
    from unite_search.verify import verify

    return verify(store.path).damaged


def write_again(store, name, vec):
    """Row ``name`` deleted and written again under its id, so its key, with another vector: what ingest
    does when a ``*.jsonl`` item's content changes. Returns the key."""
    store.tables.delete_units("text", [f"u-{name}"])
    store.tables.add_rows("text", [{**rows_for([name])[0], "unit": f"u-{name}-again"}], vec[None])
    return row_key(name)


@pytest.mark.parametrize("path", ["flat", "delta", "carried delta", "rewrite"])
def test_a_row_written_again_under_its_key_has_its_new_vector_in_the_index(tmp_path, request, path):
    if path == "flat":
        store, manifest = new_store(tmp_path)
        vecs, names = clustered(800), [f"r{i}" for i in range(800)]
        store.tables.add_rows("text", rows_for(names), vecs)
        manifest = store.publish(manifest, ["text"], flat_max=1000)
    else:
        store, manifest, names, vecs = request.getfixturevalue("ivf_shard")
    victim = {"flat": 5, "delta": 5, "carried delta": 2505, "rewrite": 5}[path]
    if path == "carried delta":  # the victim is in the previous state's delta, not in the base
        store.tables.add_rows("text", rows_for(names[2500:2510]), vecs[2500:2510])
        manifest = store.publish(manifest, ["text"], flat_max=1000)
    if path == "rewrite":  # past a tenth of the base: the base is updated in place
        store.tables.add_rows("text", rows_for(names[2500:2800]), vecs[2500:2800])
    old = vecs[victim]
    key = write_again(store, names[victim], -old)
    manifest = store.publish(manifest, ["text"], flat_max=1000, replaced={"text": [key]})
    info = manifest["shards"]["text"]["index"]
    assert {
        "flat": lambda: info["built"] == "updated" and info["last_update"] == {"added": 1, "removed": 1},
        "delta": lambda: info["built"] == "delta" and info["delta"] == {"added": 1, "removed": 1, "kept": 0},
        "carried delta": lambda: info["built"] == "delta" and info["delta"] == {"added": 10, "removed": 0, "kept": 9},
        "rewrite": lambda: info["built"] == "updated" and info["last_update"] == {"added": 301, "removed": 1},
    }[path](), info
    reader = Snapshot.open(store.path).readers["text"]
    np.testing.assert_array_equal(reader.vector(key), -old)  # like= takes the new vector
    hit = reader.search(-old, 1, allowed=None, excluded=set())[0]
    assert hit[0] == key and hit[1] == pytest.approx(1.0, abs=1e-5)
    assert key not in {k for k, _ in reader.search(old, 10, allowed=None, excluded=set())}  # the old one is gone
    assert not verify_damaged(store)


def test_a_publish_hashes_only_the_table_files_it_has_not_recorded(ivf_shard, monkeypatch):
    from unite_search import diskio, tables

    monkeypatch.setattr(tables, "COMPACT_ALWAYS_ROWS", 0)  # no compaction: the first files stay as they are
    store, manifest, names, vecs = ivf_shard
    before = manifest["shards"]["text"]["lance_files"]
    assert before and all(r.startswith("data/") for r in before)
    hashed, real = [], diskio.file_sha256
    monkeypatch.setattr(diskio, "file_sha256", lambda path: hashed.append(path) or real(path))
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    store.tables.delete_units("text", ["u-r3"])
    after = store.publish(manifest, ["text"], flat_max=1000)["shards"]["text"]["lance_files"]
    new = sorted(set(after) - set(before))
    assert len(new) == 2 and any(r.startswith("_deletions/") for r in new)  # the appended rows, the deletion
    table = store.path / "tables/text.lance"
    assert sorted(p.relative_to(table).as_posix() for p in hashed if "text.lance" in str(p)) == new
    assert all(after[r] == before[r] for r in before)


@pytest.mark.parametrize("then", ["delta", "rewrite"])
@pytest.mark.parametrize("how", ["written again", "deleted, published, added again"])
def test_a_new_vector_under_an_old_key_outlives_the_next_publishes(ivf_shard, how, then):
    """The base file keeps the old vector, hidden by the delta's removed ids: the publish after took the
    key for unchanged (in the base and the table), and the old vector was back."""
    store, manifest, names, vecs = ivf_shard
    old = vecs[5]
    if how == "written again":
        key = write_again(store, names[5], -old)
        manifest = store.publish(manifest, ["text"], flat_max=1000, replaced={"text": [key]})
    else:  # no run saw it replaced: gone at one publish, back with other content at a later one
        store.tables.delete_units("text", ["u-r5"])
        manifest = store.publish(manifest, ["text"], flat_max=1000)
        key = write_again(store, names[5], -old)
        manifest = store.publish(manifest, ["text"], flat_max=1000)
    assert manifest["shards"]["text"]["index"]["built"] == "delta"
    more = slice(2500, 2510) if then == "delta" else slice(2500, 2800)  # past a tenth: the base updated in place
    store.tables.add_rows("text", rows_for(names[more]), vecs[more])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    assert manifest["shards"]["text"]["index"]["built"] == {"delta": "delta", "rewrite": "updated"}[then]
    reader = Snapshot.open(store.path).readers["text"]
    np.testing.assert_array_equal(reader.vector(key), -old)
    hit = reader.search(-old, 1, allowed=None, excluded=set())[0]
    assert hit[0] == key and hit[1] == pytest.approx(1.0, abs=1e-5)
    assert not verify_damaged(store)


def test_changes_past_a_tenth_of_the_base_rewrite_it(ivf_shard):
    store, manifest, names, vecs = ivf_shard
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    assert manifest["shards"]["text"]["index"]["built"] == "delta"
    store.tables.add_rows("text", rows_for(names[2600:2800]), vecs[2600:2800])  # 300 since the base: past 250
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    entry = manifest["shards"]["text"]
    assert entry["index"]["built"] == "updated" and entry["index"]["last_update"] == {"added": 300, "removed": 0}
    assert "delta" not in entry and "removed" not in entry and entry["rows"] == 2800
    assert Snapshot.open(store.path).readers["text"].index().ntotal == 2800
    assert not verify_damaged(store)


def test_a_damaged_delta_is_an_error_for_readers_and_rebuilt_by_the_writer(ivf_shard):
    from unite_search.errors import IndexDamagedError

    store, manifest, names, vecs = ivf_shard
    store.tables.add_rows("text", rows_for(names[2500:2600]), vecs[2500:2600])
    manifest = store.publish(manifest, ["text"], flat_max=1000)
    path = store.path / manifest["shards"]["text"]["delta"]["faiss"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexDamagedError, match=r"delta\.faiss does not match its recorded sha256"):
        Snapshot.open(store.path).readers["text"].index()
    assert verify_damaged(store)
    assert "text" in store.needs_repair(manifest)
    manifest = store.publish(manifest, ["text"], flat_max=1000)  # what ingest does with a damaged shard
    assert manifest["shards"]["text"]["index"]["built"] == "full" and "delta" not in manifest["shards"]["text"]
    assert Snapshot.open(store.path).readers["text"].index().ntotal == 2600


def test_rows_read_by_offset_are_the_pinned_versions_whether_in_runs_or_scattered(tmp_path, monkeypatch):
    """What an update reads of the rows a table gained: runs of consecutive offsets by a scan, scattered
    ones by take, through LanceDB where the dataset cannot be had; a row other than asked is damage."""
    from unite_search import publish
    from unite_search.errors import IndexDamagedError

    store, _ = new_store(tmp_path, dim=8)
    vecs = clustered(900, dim=8)
    names = [f"r{i}" for i in range(900)]
    for part in range(3):  # three fragments
        store.tables.add_rows(
            "text", rows_for(names[part * 300 : (part + 1) * 300]), vecs[part * 300 : (part + 1) * 300]
        )
    store.tables.delete_units("text", {f"u-r{i}" for i in range(0, 900, 7)})  # deletion files in every fragment
    version = store.tables.versions()["text"]
    pinned = store.tables.open("text", version)
    keys = publish._keys(pinned)
    all_keys, all_vecs = table_state(store, version)
    np.testing.assert_array_equal(keys, all_keys)
    offsets = np.array(sorted({*range(180, 420), 3, 9, 10, 600, len(keys) - 1}))  # a run across fragments, and singles

    def read():
        got = list(publish._rows_at(pinned, offsets, keys, 8, chunk=100))
        return np.concatenate([k for k, _ in got]), np.concatenate([v for _, v in got])

    got_keys, got_vecs = read()
    assert sorted(got_keys.tolist()) == sorted(keys[offsets].tolist())
    where = {int(k): i for i, k in enumerate(all_keys)}
    np.testing.assert_array_equal(got_vecs, all_vecs[[where[int(k)] for k in got_keys]])
    with monkeypatch.context() as m:  # no dataset: LanceDB's take_offsets, the same rows
        m.setattr(type(pinned), "to_lance", lambda self: (_ for _ in ()).throw(ImportError("no pylance")))
        fallback_keys, fallback_vecs = read()
    np.testing.assert_array_equal(np.sort(fallback_keys), np.sort(got_keys))
    np.testing.assert_array_equal(fallback_vecs[np.argsort(fallback_keys)], got_vecs[np.argsort(got_keys)])
    with pytest.raises(IndexDamagedError, match="other rows than asked"):
        list(publish._rows_at(pinned, offsets, np.roll(keys, 1), 8))


def test_a_publish_makes_each_rename_durable_before_the_manifest_names_it(tmp_path, monkeypatch):
    import os

    synced, real = [], os.fsync

    def watched(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    store, manifest = new_store(tmp_path)
    store.tables.add_rows("text", rows_for([f"r{i}" for i in range(50)]), clustered(50))
    monkeypatch.setattr(os, "fsync", watched)
    store.publish(manifest, ["text"], flat_max=1000)
    faiss_dir, root = str(store.path / "faiss"), str(store.path)
    manifest_file = next(i for i, p in enumerate(synced) if os.path.basename(p).startswith(".manifest.json"))
    assert faiss_dir in synced[:manifest_file]  # the FAISS file's rename first, then the manifest's bytes
    assert synced[manifest_file + 1 :] == [root]  # ... and its rename
