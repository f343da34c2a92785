"""HNSW beside the index kinds unite-search builds, at the shard sizes where it could win.

    python benchmarks/hnsw.py                                   # 100k and 300k x 1536 (tens of minutes here)
    python benchmarks/hnsw.py --sizes 20000 --dim 128 --json    # a quick look; last line is one JSON object

For each size, the same vectors (a Gaussian mixture on the unit sphere, as ``scale.py`` draws them) go
into three indexes, each built by what would build it:

- ``exact``: ``ann.build`` with the shard under ``--flat-max`` (``IDMap2,Flat``);
- ``ivf``: ``ann.build`` above it (``IVF{nlist},Flat``, nprobe tuned by the project's own rule to
  recall@10 >= 0.95 on the shard's vectors);
- ``hnsw``: FAISS ``HNSW{M},Flat`` (inner product) with ``--ef-construction``, its ``efSearch`` the
  smallest power of two whose recall@10 reaches 0.95 on half of the queries.

Each arm's build time and file size are recorded. ``--queries`` new vectors are drawn from the same
mixture: half tune HNSW's efSearch, and the other half are what is measured: recall@10 against the
exact index, and each searched one at a time for its top 10 by every arm, the arms alternating by
round (``--rounds``, after a warm-up round), p50/p95 over every search.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from scale import Mixture  # noqa: E402
from timing import load, machine, repeats_arg  # noqa: E402

from unite_search import ann  # noqa: E402

K = 10


def batches_of(vecs: np.ndarray, keys: np.ndarray, size: int = 50_000):
    def batches():
        for i in range(0, len(vecs), size):
            yield keys[i : i + size], vecs[i : i + size]

    return batches


def file_mb(index) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        ann._faiss().write_index(index, path)
        return round(os.path.getsize(path) / 2**20, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def build_hnsw(vecs: np.ndarray, keys: np.ndarray, m: int, ef_construction: int):
    faiss = ann._faiss()
    index = faiss.index_factory(vecs.shape[1], f"IDMap2,HNSW{m},Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(index.index).hnsw.efConstruction = ef_construction
    for part, part_keys in zip(np.array_split(vecs, 20), np.array_split(keys, 20), strict=True):
        index.add_with_ids(part, part_keys)
    return index


def tune_ef(index, queries: np.ndarray, truth: np.ndarray, target: float) -> tuple[int, dict[str, float]]:
    """The smallest power-of-two efSearch reaching ``target`` recall@10 on these queries."""
    faiss = ann._faiss()
    inner = faiss.downcast_index(index.index)
    curve = {}
    ef = 16
    while True:
        inner.hnsw.efSearch = ef
        got = recall(index.search(queries, K)[1], truth)
        curve[str(ef)] = round(got, 4)
        if got >= target or ef >= 4096:
            return ef, curve
        ef *= 2


def one_size(n: int, args) -> dict:
    mix = Mixture(args.dim, args.centers, args.spread)
    vecs = mix.draw(n)
    keys = np.arange(n, dtype=np.int64)
    queries = mix.draw(args.queries)
    tune, held = queries[: len(queries) // 2], queries[len(queries) // 2 :]
    out: dict = {"rows": n, "dim": args.dim}
    indexes = {}
    t = time.perf_counter()
    indexes["exact"], _ = ann.build(batches_of(vecs, keys), n, args.dim, flat_max=n + 1)
    out["exact"] = {"build_s": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    indexes["ivf"], info = ann.build(batches_of(vecs, keys), n, args.dim, flat_max=0, gpu=False)
    out["ivf"] = {"build_s": round(time.perf_counter() - t, 1), "factory": info["factory"], "nprobe": info["nprobe"]}
    print(f"  {n:,}: exact {out['exact']['build_s']} s, ivf {out['ivf']['build_s']} s", file=sys.stderr, flush=True)
    t = time.perf_counter()
    indexes["hnsw"] = build_hnsw(vecs, keys, args.m, args.ef_construction)
    out["hnsw"] = {"build_s": round(time.perf_counter() - t, 1), "factory": f"HNSW{args.m},Flat",
                   "ef_construction": args.ef_construction}  # fmt: skip
    print(f"  {n:,}: hnsw {out['hnsw']['build_s']} s", file=sys.stderr, flush=True)
    del vecs
    truth_tune = indexes["exact"].search(tune, K)[1]
    truth_held = indexes["exact"].search(held, K)[1]
    ef, curve = tune_ef(indexes["hnsw"], tune, truth_tune, args.target)
    out["hnsw"].update(ef_search=ef, ef_curve=curve)
    for name, index in indexes.items():
        out[name]["file_mb"] = file_mb(index)
        out[name]["recall_at_10"] = round(recall(index.search(held, K)[1], truth_held), 4)
    times: dict[str, list[float]] = {name: [] for name in indexes}
    for r in range(args.rounds + 1):  # round 0 warms every arm up and is not kept
        order = list(indexes) if r % 2 else list(indexes)[::-1]
        for name in order:
            index = indexes[name]
            for q in held:
                t = time.perf_counter()
                index.search(q[None, :], K)
                if r:
                    times[name].append(time.perf_counter() - t)
    for name, spent in times.items():
        ms = np.asarray(spent) * 1000
        out[name].update(p50_ms=round(float(np.percentile(ms, 50)), 3), p95_ms=round(float(np.percentile(ms, 95)), 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,300000", help="comma-separated row counts")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--centers", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=400, help="new vectors: half tune efSearch, half are timed")
    ap.add_argument("--m", type=int, default=32, help="HNSW neighbours a node")
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--target", type=float, default=ann.TARGET_RECALL)
    ap.add_argument("--rounds", type=repeats_arg, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = {"machine": machine(), "load_before": load(), "m": args.m, "sizes": []}
    for n in (int(s) for s in args.sizes.split(",")):
        result["sizes"].append(one_size(n, args))
    result["load_after"] = load()
    print(f"{'rows':>9s}  {'index':6s} {'build s':>8s} {'file MB':>8s} {'recall@10':>9s} {'p50 ms':>7s} {'p95 ms':>7s}")
    for size in result["sizes"]:
        for name in ("exact", "ivf", "hnsw"):
            a = size[name]
            print(f"{size['rows']:>9,d}  {name:6s} {a['build_s']:>8.1f} {a['file_mb']:>8.1f} {a['recall_at_10']:>9.3f} "
                  f"{a['p50_ms']:>7.2f} {a['p95_ms']:>7.2f}")  # fmt: skip
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
