"""FAISS indexes over a shard's vectors, chosen by a fixed rule and tuned against exact search.

The rule (recorded in each shard's manifest entry):

- up to ``flat_max`` rows (default 100,000): exact search, ``IDMap2,Flat`` with inner product;
- above: ``IVF{nlist},Flat`` with inner product, ``nlist = min(4 * sqrt(n), n / 39)``, trained on a
  seeded sample of at most ``64 * nlist`` rows. ``nprobe`` is the smallest power of two whose
  recall@10 against exact search, measured on up to 1,000 of the shard's own vectors, reaches
  ``target`` (0.95). Exact search here is the same IVF index with every list probed; each query's
  own vector is left out of both result lists, so a vector finding itself does not count.

Vectors are L2-normalised, so inner product is cosine similarity. Indexes are written with
``faiss.write_index`` (FAISS's own binary format), never pickled. FAISS GPU, when installed and a
GPU is visible, trains the IVF quantizer; the stored index is always a CPU index.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .errors import MissingDependencyError

FLAT_MAX = 100_000
TARGET_RECALL = 0.95
RECALL_QUERIES = 1000
RECALL_K = 10

Batches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # () -> iter of (keys int64, vectors float32)


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError("FAISS is not installed: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


def gpu_count() -> int:
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def nlist_for(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build(
    batches: Batches,
    n: int,
    dim: int,
    *,
    flat_max: int = FLAT_MAX,
    target: float = TARGET_RECALL,
    gpu: bool | str = "auto",
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A FAISS index over ``n`` vectors streamed by ``batches`` (callable twice), and its manifest entry."""
    faiss = _faiss()
    if n <= flat_max:
        index = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        for keys, vecs in batches():
            index.add_with_ids(vecs, keys)
        return index, {"type": "flat", "factory": "IDMap2,Flat", "metric": "inner_product", "flat_max": flat_max}

    nlist = nlist_for(n)
    rng = np.random.default_rng(seed)
    n_train = min(n, 64 * nlist)
    train_at = np.sort(rng.choice(n, size=n_train, replace=False))
    train, train_keys = _gather(batches, train_at, dim)  # (n_train, dim), (n_train,)
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    on_gpu = gpu is True or (gpu == "auto" and gpu_count() > 0)
    if on_gpu:  # k-means assignment on the GPU; the index itself stays on the CPU
        index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
    index.train(train)
    if on_gpu:
        index.clustering_index = None
    for keys, vecs in batches():
        index.add_with_ids(vecs, keys)

    pick = rng.choice(n_train, size=min(RECALL_QUERIES, n_train), replace=False)
    nprobe, recall, curve = tune_nprobe(index, train[pick], target, exclude=train_keys[pick])
    index.nprobe = nprobe
    info = {
        "type": "ivf",
        "factory": f"IVF{nlist},Flat",
        "metric": "inner_product",
        "flat_max": flat_max,
        "nlist": nlist,
        "trained_on": int(n_train),
        "nprobe": nprobe,
        "recall_at_10": round(recall, 4),
        "recall_target": target,
        "recall_queries": len(pick),
        "recall_method": "leave-one-out on the shard's own vectors, against every list probed",
        "recall_curve": curve,
        "gpu_trained": bool(on_gpu),
    }
    return index, info


def _gather(batches: Batches, positions: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty((len(positions), dim), dtype=np.float32)
    out_keys = np.empty(len(positions), dtype=np.int64)
    filled, offset = 0, 0
    for keys, vecs in batches():
        stop = offset + len(vecs)
        lo, hi = np.searchsorted(positions, [offset, stop])
        out[filled : filled + hi - lo] = vecs[positions[lo:hi] - offset]
        out_keys[filled : filled + hi - lo] = keys[positions[lo:hi] - offset]
        filled += hi - lo
        offset = stop
    if filled != len(positions):
        raise RuntimeError(f"shard yielded {offset} vectors, fewer than the {positions[-1] + 1} counted")
    return out, out_keys


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k ids) present in the same row of ``found``."""
    hits = []
    for got, want in zip(found, truth, strict=True):
        want = set(want[want >= 0].tolist())  # -1 pads rows when a shard has fewer than k vectors
        hits.append(len(set(got.tolist()) & want) / max(1, len(want)))
    return float(np.mean(hits)) if hits else 1.0


def _without(found: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than that row's own query id (-1 pads)."""
    if exclude is None:
        return found[:, :k]
    out = np.full((len(found), k), -1, dtype=found.dtype)
    for i, row in enumerate(found):
        kept = row[row != exclude[i]][:k]
        out[i, : len(kept)] = kept
    return out


def tune_nprobe(
    index, queries: np.ndarray, target: float, exclude: np.ndarray | None = None
) -> tuple[int, float, dict[str, float]]:
    """Smallest power-of-two nprobe whose recall@10 against exhaustive probing reaches ``target``.

    ``exclude`` holds each query's own id when queries are the shard's vectors: a vector always
    finds itself, which would flatter the recall, so it is left out of both lists (leave-one-out).
    """
    k = min(RECALL_K, index.ntotal)
    extra = 0 if exclude is None else 1
    index.nprobe = index.nlist
    truth = _without(index.search(queries, k + extra)[1], exclude, k)
    curve: dict[str, float] = {}
    nprobe = 1
    while True:
        index.nprobe = nprobe
        found = _without(index.search(queries, k + extra)[1], exclude, k)
        recall = recall_at_k(found, truth)
        curve[str(nprobe)] = round(recall, 4)
        if recall >= target or nprobe >= index.nlist:
            return nprobe, recall, curve
        nprobe = min(nprobe * 2, index.nlist)


def write(index, path: str | os.PathLike) -> None:
    """Write atomically: a reader never sees a half-written file."""
    faiss = _faiss()
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    faiss.write_index(index, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def stored(index) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) an ``IDMap2,Flat`` or ``IVF,Flat`` index holds: ``(n,)`` int64, ``(n, d)`` float32."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexIDMap2):
        flat = faiss.downcast_index(index.index)
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        vecs = faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d) if index.ntotal else np.empty(0, np.float32)
        return ids, np.array(vecs, dtype=np.float32).reshape(-1, index.d)
    index = faiss.extract_index_ivf(index)
    lists = index.invlists
    ids, vecs = [], []
    for i in range(index.nlist):
        n = lists.list_size(i)
        if n:
            ids.append(faiss.rev_swig_ptr(lists.get_ids(i), n).copy())
            codes = faiss.rev_swig_ptr(lists.get_codes(i), n * lists.code_size).copy()
            vecs.append(codes.view(np.float32).reshape(n, index.d))  # IVF,Flat codes are the raw vectors
    if not ids:
        return np.empty(0, np.int64), np.empty((0, index.d), np.float32)
    return np.concatenate(ids).astype(np.int64), np.concatenate(vecs)


def read(path: str | os.PathLike):
    return _faiss().read_index(os.fspath(path))
