"""FAISS indexes over a shard's vectors, chosen by a fixed rule and tuned against exact search.

The rule (recorded in each shard's manifest entry):

- up to ``flat_max`` rows (default 100,000): exact search, ``IDMap2,Flat`` with inner product;
- above: ``IVF{nlist},Flat`` with inner product, ``nlist = min(4 * sqrt(n), n / 39)``, trained on a
  seeded sample of at most ``64 * nlist`` rows. ``nprobe`` is the smallest power of two whose
  recall@10 against exact search, measured on up to 1,000 of the shard's own vectors, reaches
  ``target`` (0.95). The exact answers come from a flat search over every vector of the shard; each
  query's own vector is left out of both result lists, so a vector finding itself does not count.
  nprobe is chosen by bisection on 200 of the queries, and the recall recorded is measured on the
  others (held out from the choice).
- past a memory budget: IVF with 8-bit scalar (SQ8), 4-bit scalar (SQ4) or PQ codes, the finest that
  fits, whose top candidates are re-ranked exactly from the table's float32 vectors. When the target
  is missed with every list probed, the candidates double (up to :data:`RERANK_MAX` per hit) until
  it is reached, and the entry's ``rerank`` records the width chosen.

Vectors are L2-normalised, so inner product is cosine similarity. Indexes are written with
``faiss.write_index`` (FAISS's own binary format), never pickled. FAISS GPU, when installed and a
GPU is visible, trains the IVF quantizer and takes the exact answers the tuning measures against; the
stored index is always a CPU index. A reader asked to (``gpu_search``) searches a GPU copy of it
(:func:`gpu_copy`) when it fits.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .diskio import write_atomic
from .errors import MissingDependencyError

FLAT_MAX = 100_000
TARGET_RECALL = 0.95
RECALL_QUERIES = 1000
RECALL_K = 10
TUNE_QUERIES = 200  # queries the nprobe is chosen on; the rest measure the recall recorded
RETRAIN_GROWTH = 2.0  # an IVF index is retrained once its shard is this factor larger (or smaller) than when trained
FRESH_QUERIES = 64  # added rows that check an updated IVF index's recall against exact search
FRESH_MIN = 50  # fewer rows added than this: no recall check at this publish (too few to measure)
MEMORY_FRACTION = 0.5  # default memory budget of one shard's index: this share of the machine's RAM
PQ_DIMS = 16  # dimensions per PQ sub-quantizer (8-bit codes): 1536 -> PQ96, 96 bytes a vector
DELTA_MAX = 0.1  # an IVF shard's changes stay beside its base file until they reach this share of it
RERANK = {"sq8": 4, "sq4": 4, "pq": 10}  # an index of codes returns this many candidates per hit, re-ranked exactly
RERANK_MAX = 100  # ... and up to this many when the tuning finds too few true neighbours among them

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


GPU_SHARE = 0.5  # a GPU copy is made only of an index that takes at most this share of the GPU's free memory
GPU_MAX_K = 2048  # FAISS on the GPU returns at most this many hits a query, and probes at most this many lists


def gpu_free_bytes(device: int = 0) -> int | None:
    """Free memory of a CUDA device (through torch), or None when there is none to ask."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(device)[0])
    except (ImportError, RuntimeError):
        return None


_GPU_RESOURCES: list[Any] = []  # one StandardGpuResources for the process (scratch memory, streams)


def gpu_resources():
    faiss = _faiss()
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    return _GPU_RESOURCES[0]


def gpu_copy(index, info: dict[str, Any], removed: np.ndarray | None = None) -> tuple[Any, str]:
    """(a copy of ``index`` on GPU 0 to search, what was done) or (None, why not).

    ``removed``: ids taken out of ``index`` first, in place (a delta publish's removed ids: FAISS on the
    GPU ignores ID selectors; pass an index read for this alone, not a mapped one). An IVF copy probes
    the entry's ``nprobe`` lists. Made only where FAISS sees a GPU and the index takes at most
    :data:`GPU_SHARE` of its free memory; a PQ index keeps float16 lookup tables there (its candidates
    are re-ranked exactly anyway)."""
    faiss = _faiss()
    if gpu_count() == 0:
        return None, "FAISS sees no GPU (faiss-cpu is installed, or no device is visible)"
    codes = codes_of(info)
    need = index_bytes(codes, index.ntotal, index.d, int(info.get("nlist") or 0))
    free = gpu_free_bytes()
    if free is None or need > GPU_SHARE * free:
        have = "unknown" if free is None else f"{free >> 20} MB"
        return None, f"the index ({need >> 20} MB) does not fit in {GPU_SHARE:.0%} of the GPU's free memory ({have})"
    nprobe = int(info.get("nprobe") or 1)
    if nprobe > GPU_MAX_K:
        return None, f"nprobe {nprobe} is over the {GPU_MAX_K} lists FAISS probes on a GPU"
    options = faiss.GpuClonerOptions()
    options.useFloat16 = codes == "pq"
    try:
        if removed is not None and len(removed):
            update(index, removed, iter(()))
        copy = faiss.index_cpu_to_gpu(gpu_resources(), 0, index, options)
        if info.get("type") == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(copy, "nprobe", nprobe)
    except RuntimeError as exc:
        return None, f"FAISS could not copy it to the GPU ({str(exc).strip().splitlines()[-1][:200]})"
    return copy, f"searched on the GPU ({need >> 20} MB)"


def codes_of(info: dict[str, Any]) -> str:
    """The codes a manifest entry's index holds (entries made before kinds had no ``codes``)."""
    return info.get("codes") or ("exact" if info.get("type", "flat") == "flat" else "flat")


def _ivf(index):
    """The IVF index inside ``index`` as its own class (``extract_index_ivf`` gives the base class)."""
    faiss = _faiss()
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def nlist_for(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_memory() -> int:
    """The default memory budget of one shard's index: :data:`MEMORY_FRACTION` of this machine's RAM."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * MEMORY_FRACTION)


def pq_subquantizers(dim: int) -> int:
    """PQ sub-quantizers: one per :data:`PQ_DIMS` dimensions (1536 -> 96), a divisor of ``dim``."""
    m = max(1, dim // PQ_DIMS)
    while dim % m:
        m -= 1
    return m


def index_bytes(codes: str, n: int, dim: int, nlist: int = 0) -> int:
    """Memory an index of ``n`` vectors holds: its codes and ids, plus the IVF centroids (and codebooks)."""
    per_row = {"exact": 4 * dim + 16, "flat": 4 * dim, "sq8": dim, "sq4": (dim + 1) // 2, "pq": pq_subquantizers(dim)}
    fixed = {"exact": 0, "flat": 0, "sq8": 8 * dim, "sq4": 8 * dim, "pq": 256 * dim * 4}[codes]
    return n * (per_row[codes] + 8) + fixed + nlist * dim * 4


def choose(n: int, dim: int, flat_max: int = FLAT_MAX, memory: int | None = None) -> dict[str, Any]:
    """The index kind for ``n`` vectors: exact up to ``flat_max`` rows, else the first IVF kind whose
    memory fits ``memory`` (IVF-Flat, then SQ8, SQ4 and PQ codes, all re-ranked exactly from the
    table's vectors). Nothing fitting: PQ, marked ``over_budget``."""
    memory = default_memory() if memory is None else memory
    exact = index_bytes("exact", n, dim)
    if n <= flat_max and exact <= memory:
        return {"type": "flat", "codes": "exact", "factory": "IDMap2,Flat", "memory_bytes": exact}
    nlist = nlist_for(n)
    options = [("flat", "Flat"), ("sq8", "SQ8"), ("sq4", "SQ4")]
    if min(n, 64 * nlist) >= 256:  # a PQ codebook of 256 centroids needs that many training vectors
        options.append(("pq", f"PQ{pq_subquantizers(dim)}"))
    for codes, suffix in options:
        need = index_bytes(codes, n, dim, nlist)
        if need <= memory or codes == options[-1][0]:
            out = {"type": "ivf", "codes": codes, "factory": f"IVF{nlist},{suffix}", "nlist": nlist}
            out.update(memory_bytes=need, rerank=RERANK.get(codes, 1))
            if need > memory:
                out["over_budget"] = True
            return out
    raise AssertionError("unreachable")


def build(
    batches: Batches,
    n: int,
    dim: int,
    *,
    flat_max: int = FLAT_MAX,
    memory: int | None = None,
    target: float = TARGET_RECALL,
    gpu: bool | str = "auto",
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A FAISS index over ``n`` vectors streamed by ``batches`` (callable twice), and its manifest entry.

    The kind comes from :func:`choose` (``flat_max``, ``memory``: bytes the index may hold)."""
    faiss = _faiss()
    kind = choose(n, dim, flat_max, memory)
    budget = default_memory() if memory is None else memory  # as choose() took it (0 is a budget too)
    common = {"metric": "inner_product", "flat_max": flat_max, "memory_budget": budget}
    if kind["type"] == "flat":
        index = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        for keys, vecs in batches():
            index.add_with_ids(vecs, keys)
        return index, {**kind, **common}

    nlist = kind["nlist"]
    rng = np.random.default_rng(seed)
    n_train = min(n, 64 * nlist)
    train_at = np.sort(rng.choice(n, size=n_train, replace=False))
    train, train_keys = _gather(batches, train_at, dim)  # (n_train, dim), (n_train,)
    index = faiss.index_factory(dim, kind["factory"], faiss.METRIC_INNER_PRODUCT)
    on_gpu = gpu is True or (gpu == "auto" and gpu_count() > 0)
    if on_gpu:  # k-means assignment on the GPU; the index itself stays on the CPU
        index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
    index.train(train)
    if on_gpu:
        index.clustering_index = None
    # the tuning's queries come from the sample; the rest of it (5 GB at 10M x 1536) is freed before the add
    pick = rng.choice(n_train, size=min(RECALL_QUERIES, n_train), replace=False)
    queries, query_keys = train[pick], train_keys[pick]
    del train, train_keys
    for keys, vecs in batches():
        index.add_with_ids(vecs, keys)
    trained_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    truth = exact_top(batches, queries, RECALL_K + 1, index.metric_type, gpu=on_gpu)  # +1: finds itself
    rerank = kind["rerank"]
    tuned = tune_nprobe(
        index,
        queries,
        target,
        exclude=query_keys,
        truth=truth,
        candidates=RECALL_K * rerank,
        max_candidates=RECALL_K * RERANK_MAX if rerank > 1 else None,
    )
    nprobe, recall, curve = tuned.nprobe, tuned.recall, tuned.curve
    index.nprobe = nprobe
    reranked = ""
    if rerank > 1:
        reranked = f", the top {tuned.candidates} candidates re-ranked exactly"
        if tuned.candidates > RECALL_K * rerank:
            reranked += f" (widened from {RECALL_K * rerank}: too few true neighbours among them)"
        rerank = -(-tuned.candidates // RECALL_K)
    info = {
        **kind,
        **common,
        "rerank": rerank,
        **({"rerank_max": RERANK_MAX} if kind["rerank"] > 1 else {}),
        "trained_on": int(n_train),
        "trained_rows": int(n),
        "trained_at": trained_at,
        "nprobe": nprobe,
        "recall_at_10": round(recall, 4),
        "recall_target": target,
        "recall_queries": len(pick) - min(TUNE_QUERIES, len(pick) // 2),
        "recall_method": (
            "leave-one-out on the shard's own vectors against an exact (flat) search; nprobe chosen by "
            f"bisection on {min(TUNE_QUERIES, len(pick) // 2)} queries, recall measured on the others{reranked}"
        ),
        "recall_curve": curve,
        "gpu_trained": bool(on_gpu),
    }
    return index, info


def ids(index) -> np.ndarray:
    """Every id an ``IDMap2`` or IVF index holds, ``(ntotal,)`` int64 (in no particular order)."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    sizes = [(i, lists.list_size(i)) for i in range(ivf.nlist)]
    out = [faiss.rev_swig_ptr(lists.get_ids(i), size).copy() for i, size in sizes if size]
    return np.concatenate(out).astype(np.int64) if out else np.empty(0, np.int64)


def rebuild_reason(
    info: dict[str, Any], n: int, dim: int, flat_max: int = FLAT_MAX, memory: int | None = None
) -> str | None:
    """Why a shard of ``n`` rows needs a new index rather than an update of the one ``info`` describes:
    :func:`choose` now picks another kind, an index of codes missed its target when the tuning could
    not yet widen its candidates, or an IVF index's size moved past :data:`RETRAIN_GROWTH`."""
    have_type = info.get("type", "flat")
    have = codes_of(info)
    want = choose(n, dim, flat_max, memory)
    if (want["type"], want["codes"]) != (have_type, have):
        if have_type == "flat" and n > flat_max:
            return f"{n} rows, above the exact-search limit of {flat_max}"
        if want["type"] == "flat":
            return f"{n} rows, within the exact-search limit of {flat_max}"
        budget = (memory if memory is not None else default_memory()) >> 20
        return f"{n} rows: {want['factory']} is the index that fits the memory budget of {budget} MB now"
    if have_type == "flat":
        return None
    if int(info.get("rerank") or 1) > 1 and "rerank_max" not in info:
        recall, target = info.get("recall_at_10"), info.get("recall_target") or TARGET_RECALL
        if recall is not None and recall < target:
            return f"recall@10 {recall} under its {target} target, tuned before candidates could widen"
    trained = int(info.get("trained_rows") or 0)
    if not trained:
        return "the index does not record the rows it was trained at (made by an older unite-search)"
    if n > RETRAIN_GROWTH * trained or n * RETRAIN_GROWTH < trained:
        return f"{n} rows, past {RETRAIN_GROWTH:g}x the {trained} it was trained at"
    return None


def empty_like(index):
    """``index`` (IVF, freshly read) emptied: its trained quantizer and codebooks, with new empty lists."""
    faiss = _faiss()
    ivf = _ivf(index)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    ivf.ntotal = 0
    index.ntotal = 0
    return index


def same_trained(a, b) -> bool:
    """Whether two IVF indexes share their training: kind, centroids and, for codes, the codebooks."""
    faiss = _faiss()
    x, y = _ivf(a), _ivf(b)
    shape = lambda ivf: (type(ivf), ivf.d, ivf.nlist, ivf.code_size, ivf.metric_type)  # noqa: E731
    if shape(x) != shape(y):
        return False

    def trained(ivf) -> list[np.ndarray]:
        parts = [ivf.quantizer.reconstruct_n(0, ivf.nlist)]
        if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
            parts.append(faiss.vector_to_array(ivf.sq.trained))
        elif isinstance(ivf, faiss.IndexIVFPQ):
            parts.append(faiss.vector_to_array(ivf.pq.centroids))
        return parts

    return all(np.array_equal(p, q) for p, q in zip(trained(x), trained(y), strict=True))


def update(index, removed: np.ndarray, added: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    """Remove the ``removed`` ids from a built index and add the (keys, vectors) of ``added``, in place.

    An IVF index puts each new vector in the list of its nearest centroid, trained before: the caller
    checks the recall (:func:`fresh_recall`) and retrains when it falls. Returns (removed, added) counts."""
    faiss = _faiss()
    gone = 0
    if len(removed):
        gone = int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(removed, dtype=np.int64))))
    if gone != len(removed):
        raise RuntimeError(f"FAISS removed {gone} of the {len(removed)} ids asked")
    count = 0
    for keys, vecs in added:
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.ascontiguousarray(keys, dtype=np.int64))
        count += len(keys)
    return gone, count


def _ivf_lists(index) -> Batches:
    """(ids, vectors) of each non-empty list of an ``IVF,Flat`` index, as views of its memory (no copy)."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    lists, d = ivf.invlists, ivf.d

    def gen():
        for i in range(ivf.nlist):
            size = lists.list_size(i)
            if size:
                keys = faiss.rev_swig_ptr(lists.get_ids(i), size)
                codes = faiss.rev_swig_ptr(lists.get_codes(i), size * lists.code_size)
                yield keys, codes.view(np.float32).reshape(size, d)  # IVF,Flat codes: the raw vectors

    return gen


def fresh_recall(index, queries: np.ndarray, query_keys: np.ndarray, nprobe: int, candidates: int = RECALL_K) -> float:
    """recall@10 at ``nprobe`` of an updated IVF index on rows it holds (each query's own id left out).

    ``IVF,Flat``: against an exact flat search over every vector the index holds. An index of codes
    (re-ranked from its top ``candidates``): against the same codes with every list probed, which
    measures what an update can spoil, the lists new rows were put in."""
    faiss = _faiss()
    k = min(RECALL_K, index.ntotal - 1)
    if k < 1:
        return 1.0
    ivf = _ivf(index)
    if isinstance(ivf, faiss.IndexIVFFlat):
        truth = exact_top(_ivf_lists(index), queries, k + 1, index.metric_type)
    else:
        truth = index.search(queries, k + 1, params=faiss.SearchParametersIVF(nprobe=ivf.nlist))[1]
    truth = _without(truth, query_keys, k)
    width = min(max(candidates, k), index.ntotal - 1)
    found = _without(
        index.search(queries, width + 1, params=faiss.SearchParametersIVF(nprobe=nprobe))[1], query_keys, width
    )
    return recall_at_k(found, truth)


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
        hits.append(len(set(got.tolist()) & want) / len(want) if want else 1.0)  # nothing to find: none missed
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


def exact_top(batches: Batches, queries: np.ndarray, k: int, metric, gpu: bool = False) -> np.ndarray:
    """The ids of each query's exact top ``k`` over every vector ``batches`` streams (inner product):
    a flat search, one batch in memory at a time (``gpu``: each batch's on GPU 0, by ``faiss.knn_gpu``).
    ``(len(queries), k)`` int64, -1 pads."""
    faiss = _faiss()
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric == faiss.METRIC_INNER_PRODUCT)
    for keys, vecs in batches():
        if gpu:
            scores, at = faiss.knn_gpu(gpu_resources(), queries, vecs, min(k, len(vecs)), metric=metric)
        else:
            scores, at = faiss.knn(queries, vecs, min(k, len(vecs)), metric=metric)
        if scores.shape[1] < k:  # a batch smaller than k: pad to the heap's width
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            at = np.pad(at, ((0, 0), (0, pad)), constant_values=-1)
        ids = np.where(at >= 0, keys[np.clip(at, 0, None)], -1)
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    heap.finalize()
    return heap.I


class Tuned(NamedTuple):
    nprobe: int
    recall: float  # recall@10 on the held-out queries (the tuning queries' when too few to hold any out)
    curve: dict[str, float]  # every recall measured: "N" (tuning queries), "N held-out", "N top W" (wider)
    candidates: int  # candidates a search re-ranks: ``candidates`` asked, or wider where that missed


def tune_nprobe(
    index,
    queries: np.ndarray,
    target: float,
    exclude: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    candidates: int = RECALL_K,
    max_candidates: int | None = None,
) -> Tuned:
    """Smallest power-of-two nprobe whose recall@10 against exact search reaches ``target``.

    ``truth``: each query's exact top ids (``exact_top``); without it, the index with every list
    probed gives them (exact for IVF-Flat, and slower). ``exclude`` holds each query's own id when
    queries are the shard's vectors: a vector always finds itself, which would flatter the recall, so it
    is left out of both lists (leave-one-out). The nprobe is found by bisection over the powers of two
    on the first :data:`TUNE_QUERIES` queries (recall grows with nprobe); the recall returned is
    measured on the others, which took no part in the choice, and nprobe doubles while they miss the
    target. ``candidates`` > 10: an index of codes whose top ``candidates`` are re-ranked exactly; a
    true top-10 id among them is then in the final top 10, so recall counts the truth found among the
    candidates. ``max_candidates``: when even every list probed misses the target, the candidates
    double, up to this many, and the nprobe is found again for the wider list (each nprobe is searched
    once, at the widest, and every width read from that one answer).
    """
    k = min(RECALL_K, index.ntotal)
    extra = 0 if exclude is None else 1
    if truth is None:
        index.nprobe = index.nlist
        truth = index.search(queries, k + extra)[1]
    truth = _without(truth, exclude, k)
    n_tune = min(TUNE_QUERIES, len(queries) // 2) or len(queries)
    tune, held = slice(0, n_tune), slice(n_tune, len(queries))
    widths = [candidates]
    while max_candidates is not None and widths[-1] < max_candidates:
        widths.append(min(2 * widths[-1], max_candidates))
    widths = list(dict.fromkeys(min(max(w, k), index.ntotal - extra) for w in widths))  # a small shard caps them
    widest = widths[-1]
    searched: dict[tuple[int, int], np.ndarray] = {}  # (nprobe, first query) -> top ``widest`` ids
    curve: dict[str, float] = {}

    def recall(nprobe: int, width: int, part: slice, held_out: bool = False) -> float:
        if (nprobe, part.start) not in searched:
            index.nprobe = nprobe
            ex = exclude[part] if exclude is not None else None
            searched[nprobe, part.start] = _without(index.search(queries[part], widest + extra)[1], ex, widest)
        label = str(nprobe) + (" held-out" if held_out else "") + ("" if width == widths[0] else f" top {width}")
        curve[label] = round(recall_at_k(searched[nprobe, part.start][:, :width], truth[part]), 4)
        return curve[label]

    probes = sorted({*(2**i for i in range(index.nlist.bit_length()) if 2**i < index.nlist), index.nlist})
    for w, width in enumerate(widths):
        last_width = w == len(widths) - 1
        lo, hi = 0, len(probes) - 1  # the answer is probes[hi] once lo == hi
        while lo < hi:
            mid = (lo + hi) // 2
            if recall(probes[mid], width, tune) >= target:
                hi = mid
            else:
                lo = mid + 1
        at = hi
        if not last_width and at == len(probes) - 1 and recall(probes[at], width, tune) < target:
            continue  # not even every list probed reaches the target with this few candidates: wider
        while True:
            if held.start >= len(queries):  # too few queries to hold any out: the tuning recall is all there is
                return Tuned(probes[at], recall(probes[at], width, tune), curve, width)
            got = recall(probes[at], width, held, held_out=True)
            if got >= target or at == len(probes) - 1:
                break
            at += 1
        if got >= target or last_width:
            return Tuned(probes[at], got, curve, width)
    raise AssertionError("unreachable")


def write(index, path: str | os.PathLike) -> str:
    """Write atomically (a reader never sees a half-written file, and a failed write leaves nothing behind);
    returns the file's sha256, computed on the bytes as they are written rather than by reading the file back."""
    import hashlib
    from pathlib import Path

    faiss = _faiss()
    digest = hashlib.sha256()

    def write_all(fh) -> None:
        def put(data: bytes) -> None:
            digest.update(data)
            fh.write(data)

        writer = faiss.PyCallbackIOWriter(put, 8 << 20)
        faiss.write_index(index, writer)
        del writer  # flushes its last block

    write_atomic(Path(path), write_all, binary=True)
    return digest.hexdigest()


def stores_vectors(index) -> bool:
    """Whether the index holds the vectors themselves (``IDMap2,Flat``, ``IVF,Flat``), not codes."""
    faiss = _faiss()
    return isinstance(index, faiss.IndexIDMap2) or isinstance(_ivf(index), faiss.IndexIVFFlat)


def stored(index) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) an ``IDMap2,Flat`` or ``IVF,Flat`` index holds: ``(n,)`` int64, ``(n, d)`` float32."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexIDMap2):
        flat = faiss.downcast_index(index.index)
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        vecs = faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d) if index.ntotal else np.empty(0, np.float32)
        return ids, np.array(vecs, dtype=np.float32).reshape(-1, index.d)
    parts = list(_ivf_lists(index)())  # views of the index's memory: concatenated into copies below
    if not parts:
        return np.empty(0, np.int64), np.empty((0, index.d), np.float32)
    ids, vecs = zip(*parts, strict=True)
    return np.concatenate(ids).astype(np.int64), np.concatenate(vecs)


def read(path: str | os.PathLike, mmap: bool = False):
    """A FAISS index from its file; ``mmap``: an IVF index's lists stay in the file, mapped, not copied
    (pages the searches touch are shared page cache; the file must then never change, and ours never do)."""
    faiss = _faiss()
    return faiss.read_index(os.fspath(path), faiss.IO_FLAG_MMAP if mmap else 0)
