"""Searching a GPU copy of a shard's FAISS index (``gpu_search``): the same answers as the CPU index,
filters and removed ids honoured, the stored file a CPU index. Where FAISS sees no GPU (faiss-cpu, or
no device), the first test shows the readers say so and search on the CPU; the others need a GPU."""

import numpy as np
import pytest
from test_ann import clustered, stream
from test_index_kinds import DIM, KINDS, N, memory_for
from test_updates import new_store, rows_for

from unite_search import ann
from unite_search.reader import Snapshot

on_gpu = pytest.mark.skipif(ann.gpu_count() == 0, reason="FAISS sees no GPU (faiss-cpu, or no device)")


def shard(tmp_path, codes):
    """A published shard of the kind asked, then a delta publish: rows added, rows of the base removed."""
    memory = memory_for(codes)
    flat_max = 10_000 if codes == "exact" else 1000
    store, manifest = new_store(tmp_path, dim=DIM)
    vecs = clustered(N + 300, dim=DIM)
    names = [f"k{i}" for i in range(N + 300)]
    store.tables.add_rows("text", rows_for(names[:N]), vecs[:N])
    manifest = store.publish(manifest, ["text"], flat_max=flat_max, memory=memory)
    store.tables.add_rows("text", rows_for(names[N:]), vecs[N:])
    store.tables.delete_units("text", [f"u-k{i}" for i in range(100)])
    manifest = store.publish(manifest, ["text"], flat_max=flat_max, memory=memory)
    return store, manifest, names, vecs


def test_without_a_gpu_readers_say_why_and_search_on_the_cpu(tmp_path):
    if ann.gpu_count():
        pytest.skip("FAISS sees a GPU here: the GPU tests below cover it")
    store, manifest, _, _ = shard(tmp_path, "flat")
    assert manifest["shards"]["text"]["index"]["built"] == "delta"
    asked = Snapshot.open(store.path, gpu_search=True).readers["text"]
    plain = Snapshot.open(store.path).readers["text"]
    assert plain.gpu_state == "not asked" and asked.gpu_state == "not loaded yet"
    for q in clustered(20, dim=DIM, noise_seed=3):
        assert asked.search(q, 10, allowed=None, excluded=set()) == plain.search(q, 10, allowed=None, excluded=set())
    assert asked.gpu_index() is None and asked.gpu_state.startswith("FAISS sees no GPU")
    from unite_search import Index

    index = Index.open(store.path, gpu_search=True)
    assert index.gpu_states() == {"text": "not loaded yet"}
    assert index.gpu_states(load=True)["text"].startswith("FAISS sees no GPU")
    index.refresh()  # a refreshed snapshot is asked the same
    assert index.gpu_states(load=True)["text"].startswith("FAISS sees no GPU")
    assert Index.open(store.path).gpu_states(load=True) == {"text": "not asked"}


@on_gpu
@pytest.mark.parametrize("codes", KINDS)
def test_gpu_search_answers_as_the_cpu_index(tmp_path, codes):
    store, _, names, vecs = shard(tmp_path, codes)
    gpu = Snapshot.open(store.path, gpu_search=True).readers["text"]
    cpu = Snapshot.open(store.path).readers["text"]
    assert gpu.gpu_index() is not None and gpu.gpu_state.startswith("searched on the GPU"), gpu.gpu_state
    gone = {rows_for([n])[0]["key"] for n in names[:100]}
    same = total = 0
    for q in [*clustered(100, dim=DIM, noise_seed=4), *vecs[:20]]:
        got = gpu.search(q, 10, allowed=None, excluded=set())
        want = cpu.search(q, 10, allowed=None, excluded=set())
        assert len(got) == len(want) == 10 and not {k for k, _ in got} & gone  # removed rows never come back
        by_key = dict(want)
        for key, score in got:  # the same scores where both found the row (exact cosines after re-ranking)
            if key in by_key:
                assert score == pytest.approx(by_key[key], abs=1e-3 if codes == "pq" else 1e-4)
        same += len({k for k, _ in got} & set(by_key))
        total += 10
    assert same / total >= (0.99 if codes in ("exact", "flat") else 0.95), same / total
    # a filter goes to the CPU index: exactly the rows it allows, in the same order as there
    allowed = np.array(sorted(rows_for([n])[0]["key"] for n in names[100:107]), dtype=np.int64)
    q = vecs[150]
    assert gpu.search(q, 10, allowed=allowed, excluded=set()) == cpu.search(q, 10, allowed=allowed, excluded=set())
    own = rows_for([names[150]])[0]["key"]  # like=: its own row left out
    assert own not in {k for k, _ in gpu.search(q, 10, allowed=None, excluded={own})}


@on_gpu
def test_an_index_too_large_for_the_gpu_stays_on_the_cpu(tmp_path, monkeypatch):
    store, _, _, _ = shard(tmp_path, "flat")
    monkeypatch.setattr(ann, "GPU_SHARE", 1e-9)
    reader = Snapshot.open(store.path, gpu_search=True).readers["text"]
    assert reader.gpu_index() is None and "does not fit" in reader.gpu_state


@on_gpu
def test_exact_answers_from_the_gpu_equal_the_cpus():
    import faiss

    vecs = clustered(5000, dim=DIM)
    keys = np.arange(5000, dtype=np.int64) * 3
    queries = clustered(64, dim=DIM, noise_seed=5)
    cpu = ann.exact_top(stream(keys, vecs), queries, 10, faiss.METRIC_INNER_PRODUCT)
    gpu = ann.exact_top(stream(keys, vecs), queries, 10, faiss.METRIC_INNER_PRODUCT, gpu=True)
    assert ann.recall_at_k(gpu, cpu) >= 0.999
