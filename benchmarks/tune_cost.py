"""What choosing an IVF shard's nprobe costs: the old way against the current one, on the same index.

    python benchmarks/tune_cost.py                      # 100,000 x 1536 clustered vectors
    python benchmarks/tune_cost.py --rows 300000        # the size the issue measured (slow here)

Vectors: a Gaussian mixture on the unit sphere (clusters, as real embeddings have; uniform noise has
none, and on it no IVF beats brute force); ``--spread`` sets how much the clusters overlap (0.7: apart,
one list is enough; 1.0, the default: overlapping, so nprobe must grow). The index is built once, as
``ann.build`` builds it. Arms:

- ``old``: what publish did before: the exact answers from the IVF index with every list probed, then
  every power of two tried on all 1,000 queries (a restatement here, for the comparison);
- ``new``: ``ann.exact_top`` (a flat search over the vectors, streamed) and ``ann.tune_nprobe``
  (bisection on 200 queries, the recall measured on the other 800).

Timed with ``benchmarks/timing.py`` (a warm-up each, ``--repeats`` alternating rounds, median and range).
Both arms must choose an nprobe whose recall@10 reaches the target; the chosen values and recalls are
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import compare, load, machine, repeats_arg, span  # noqa: E402

from unite_search import ann  # noqa: E402


def mixture(n: int, dim: int, seed: int, spread: float, centers: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(centers, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 50_000):
        m = min(50_000, n - i)
        out[i : i + m] = mu[rng.integers(0, centers, m)] + spread * rng.normal(size=(m, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def old_tune(index, queries, target, exclude):
    """The tuning publish ran before: exhaustive-IVF truth, every power of two on every query."""
    k = ann.RECALL_K
    index.nprobe = index.nlist
    truth = ann._without(index.search(queries, k + 1)[1], exclude, k)
    nprobe = 1
    while True:
        index.nprobe = nprobe
        recall = ann.recall_at_k(ann._without(index.search(queries, k + 1)[1], exclude, k), truth)
        if recall >= target or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, index.nlist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--spread", type=float, default=1.0, help="noise around a centre, in units of the centres' scale")
    ap.add_argument("--repeats", type=repeats_arg, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import faiss

    vecs = mixture(args.rows, args.dim, seed=0, spread=args.spread)
    keys = np.arange(args.rows, dtype=np.int64) * 3 + 7

    def batches():
        for i in range(0, args.rows, 65536):
            yield keys[i : i + 65536], vecs[i : i + 65536]

    t = time.perf_counter()
    index, info = ann.build(batches, args.rows, args.dim, flat_max=args.rows - 1, gpu=False)
    build_s = time.perf_counter() - t
    print(f"{args.rows} x {args.dim}: IVF{info['nlist']} built (tuning included) in {build_s:.0f} s; "
          f"nprobe {info['nprobe']}, held-out recall@10 {info['recall_at_10']}", flush=True)  # fmt: skip
    rng = np.random.default_rng(1)
    n_train = info["trained_on"]
    pick = np.sort(rng.choice(args.rows, size=ann.RECALL_QUERIES, replace=False))
    queries, exclude = vecs[pick], keys[pick]
    chosen: dict[str, list] = {"old": [], "new": []}

    def old():
        chosen["old"].append(old_tune(index, queries, ann.TARGET_RECALL, exclude))

    def new():
        truth = ann.exact_top(batches, queries, ann.RECALL_K + 1, faiss.METRIC_INNER_PRODUCT)
        nprobe, recall = ann.tune_nprobe(index, queries, ann.TARGET_RECALL, exclude=exclude, truth=truth)[:2]
        chosen["new"].append((nprobe, recall))

    before = load()
    res = compare({"old": old, "new": new}, repeats=args.repeats)
    after = load()
    print(f"machine {machine()}\nload before {before}, after {after}; trained on {n_train} rows")
    for arm in ("old", "new"):
        print(f"{arm:<4} {span(res[arm], fmt='.1f'):>24} s   nprobe, recall: {sorted(set(chosen[arm]))}")
    ratio = [o / n for o, n in zip(res["old"]["times"], res["new"]["times"], strict=True)]
    print(f"old / new: {res['old']['median'] / res['new']['median']:.2f} ({min(ratio):.2f}..{max(ratio):.2f})")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "load_before": before, "load_after": after, "rows": args.rows, "dim": args.dim,
            "build_s": build_s, "info": info, "order": res["order"],
            "old": {k: res["old"][k] for k in ("times", "median", "min", "max")},
            "new": {k: res["new"][k] for k in ("times", "median", "min", "max")},
            "chosen": {k: [list(map(float, c)) for c in v] for k, v in chosen.items()},
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
