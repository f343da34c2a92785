"""FAISS on the GPU beside the CPU, on one shard's index: training, the tuning's exact answers, search.

    python benchmarks/gpu_search.py --rows 1000000 --dim 1536 --out result.json   # on a GPU machine
    python benchmarks/gpu_search.py --rows 20000 --dim 128                          # CPU arms only (dry run)

Needs a FAISS build with GPU support for the GPU arms: ``faiss-gpu-cu12`` beside CUDA 12 libraries,
``faiss-cuda==1.14.1.post4`` beside CUDA 13 ones (``nvidia-cublas``, ``nvidia-cuda-runtime``; the
later 1.14.3 wheels of that name ask for CUDA 12's). With faiss-cpu it runs the CPU arms and says so.
Only ``unite_search.ann`` is used (no LanceDB): the vectors are ``scale.py``'s Gaussian mixture on
the sphere, held in memory.

- ``build``: ``ann.build`` with the IVF quantizer trained on the CPU and on the GPU (``gpu=``), once each;
  each build's recall@10 is its own tuning's (held-out queries);
- ``truth``: the exact top 10 of ``--queries`` queries by ``ann.exact_top`` on the CPU and the GPU,
  alternating, ``--repeats`` rounds; the two answers compared;
- ``search``: the CPU index and its ``ann.gpu_copy`` (made from the CPU build, as a reader makes it),
  one query at a time and in batches of 64, alternating, at the build's nprobe; recall@10 of each
  against the exact answers, and how many of the GPU's hits the CPU found too (``overlap``);
- ``removed``: a GPU copy with 1% of the ids taken out (as after a delta publish) never returns them.

Times are median (min..max) over the rounds; machine, versions and load are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from scale import Mixture  # noqa: E402
from timing import compare, load, machine, ratio, repeats_arg  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=repeats_arg, default=3)
    ap.add_argument("--single", type=int, default=300, help="queries timed one at a time in each round")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import faiss

    from unite_search import ann

    gpus = ann.gpu_count()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result: dict = {"rows": args.rows, "dim": args.dim, "machine": machine(), "load_before": load(),
                    "faiss": faiss.__version__, "faiss_gpus": gpus}  # fmt: skip
    if not gpus:
        say(f"FAISS {faiss.__version__} sees no GPU (faiss-cpu, or no device): only the CPU arms run")
    mix = Mixture(args.dim, 2000, 1.0)
    say(f"drawing {args.rows} x {args.dim}")
    vecs = mix.draw(args.rows)
    keys = np.arange(args.rows, dtype=np.int64) * 7 + 1
    queries = mix.draw(args.queries)

    def batches():
        for i in range(0, args.rows, 50_000):
            yield keys[i : i + 50_000], vecs[i : i + 50_000]

    builds = {}
    for arm in ["cpu", "gpu"] if gpus else ["cpu"]:
        say(f"build, quantizer trained on the {arm}")
        t = time.perf_counter()
        flat_max = min(ann.FLAT_MAX, args.rows - 1)  # an IVF index whatever the size
        index, info = ann.build(batches, args.rows, args.dim, flat_max=flat_max, gpu=arm == "gpu")
        builds[arm] = (index, info)
        result[f"build_{arm}"] = {"s": round(time.perf_counter() - t, 2), "factory": info["factory"],
                                  "nprobe": info["nprobe"], "recall_at_10": info["recall_at_10"]}  # fmt: skip
        say(json.dumps(result[f"build_{arm}"]))
    index, info = builds["cpu"]
    ip = faiss.METRIC_INNER_PRODUCT

    say("exact answers")
    out: dict = {}
    arms = {"cpu": lambda: out.__setitem__("cpu", ann.exact_top(batches, queries, 10, ip))}
    if gpus:
        arms["gpu"] = lambda: out.__setitem__("gpu", ann.exact_top(batches, queries, 10, ip, gpu=True))
    res = compare(arms, repeats=args.repeats)
    truth = out["cpu"]
    result["truth"] = {arm: {k: round(res[arm][k], 3) for k in ("median", "min", "max")} for arm in arms}
    if gpus:
        result["truth"]["cpu_over_gpu"] = ratio(res, "gpu", "cpu")
        result["truth"]["agreement"] = round(ann.recall_at_k(out["gpu"], truth), 5)
    say(json.dumps(result["truth"]))

    say("search")
    searchers = {"cpu": index}
    if gpus:
        t = time.perf_counter()
        copy, state = ann.gpu_copy(index, info)
        result["gpu_copy"] = {"s": round(time.perf_counter() - t, 2), "state": state}
        if copy is None:
            raise SystemExit(f"no GPU copy: {state}")
        searchers["gpu"] = copy
    index.nprobe = info["nprobe"]
    found: dict = {}
    single = queries[: args.single]

    def one_by_one(name):
        idx = searchers[name]
        hits = np.empty((len(single), 10), np.int64)
        for i, q in enumerate(single):
            hits[i] = idx.search(q[None, :], 10)[1][0]
        found[name] = hits

    def batched(name):
        idx = searchers[name]
        parts = [idx.search(queries[i : i + 64], 10)[1] for i in range(0, len(queries), 64)]
        found[f"{name}_batched"] = np.concatenate(parts)

    res1 = compare({name: (lambda n=name: one_by_one(n)) for name in searchers}, repeats=args.repeats)
    res64 = compare({name: (lambda n=name: batched(n)) for name in searchers}, repeats=args.repeats)
    result["search"] = {}
    for name in searchers:
        result["search"][name] = {
            "one_query_ms": round(res1[name]["median"] / len(single) * 1e3, 4),
            "one_query_ms_range": [round(res1[name][k] / len(single) * 1e3, 4) for k in ("min", "max")],
            "batch64_qps": round(len(queries) / res64[name]["median"], 1),
            "recall_at_10": round(ann.recall_at_k(found[f"{name}_batched"], truth), 4),
        }
    if gpus:
        result["search"]["cpu_over_gpu_one_query"] = ratio(res1, "gpu", "cpu")
        result["search"]["cpu_over_gpu_batch64"] = ratio(res64, "gpu", "cpu")
        result["search"]["overlap"] = round(ann.recall_at_k(found["gpu_batched"], found["cpu_batched"]), 4)
        gone = np.sort(np.random.default_rng(3).choice(keys, size=max(1, args.rows // 100), replace=False))
        private = faiss.clone_index(index)
        copy, state = ann.gpu_copy(private, info, gone)
        hits = copy.search(vecs[np.searchsorted(keys, gone[:200])], 10)[1]
        returned = int(np.isin(hits, gone).sum())
        result["removed"] = {"asked": len(gone), "copy_rows": int(copy.ntotal), "returned": returned}
        if result["removed"]["returned"] or copy.ntotal != args.rows - len(gone):
            raise SystemExit(f"the GPU copy without removed ids is wrong: {result['removed']}")
    say(json.dumps(result["search"]))
    result["load_after"] = load()
    text = json.dumps(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
