"""Query latency: ``Index.query`` next to the bare minimum (encode the query + raw FAISS search), same run.

    python benchmarks/query_latency.py                      # shards of 100k and 1M (about 13 GB of disk)
    python benchmarks/query_latency.py --sizes 20000,200000 # smaller

Shards of random unit vectors (dim 1536, the 2B models' width) are written straight into an index
(LanceDB rows with path, size and width columns; FAISS by the index's own rule, or forced exact with
``--flat``). The query encoder is a random one-layer Qwen2-VL with 1536-wide vectors, so encoding is
real but cheap on a CPU. For each text query, in alternating order:

- ``Index.query(text=q, target=shard, k=10)``: plan, encode, search, fetch the rows' metadata (held in
  memory; on the text shard, each hit's text is read from the table), merge;
- baseline: ``encoder.encode([q])`` and ``faiss_index.search(vector, 10)`` on the same FAISS index.

The difference is what the planner, the metadata fetch and the merge cost. Target: at most 10% of
the baseline plus 2 ms, at p50 and p95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unite_search import Encoder, Index
from unite_search.schema import row_key
from unite_search.store import IndexStore
from unite_search.testing import QWEN2VL_2B_MROPE, TINY_TEXT, TINY_VISION, tiny_model
from unite_search.units import IngestOptions

DIM = 1536
WIDE_TEXT = dict(TINY_TEXT, hidden_size=DIM, intermediate_size=DIM, num_hidden_layers=1, num_attention_heads=12)
WIDE_VISION = dict(TINY_VISION, hidden_size=DIM)
CHUNK = 50_000


def fill(store: IndexStore, shard: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        vecs = rng.standard_normal((m, DIM), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        widths = rng.integers(200, 4000, m)
        rows = []
        for i in range(start, start + m):
            row_id = f"{shard}-{i:07d}"
            path = f"synthetic/{shard}/{i // 1000:04d}/{i:07d}.jpg"
            rows.append({"id": row_id, "key": row_key(row_id), "unit": row_id, "unit_rows": 1, "modality": shard,
                         "source": "synthetic", "path": path, "paths": [path], "size": 1000 + i,
                         "width": int(widths[i - start]), "height": 1000})  # fmt: skip
            if shard == "text":  # a passage: search fetches the text of its hits from the table
                rows[-1]["text"] = f"passage {i}: " + "words of a synthetic passage about harbours " * 14
        store.tables.add_rows(shard, rows, vecs)


def percentiles(values) -> dict[str, float]:
    ms = np.asarray(values) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="rows per shard, comma-separated")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--flat", action="store_true", help="exact search on every shard, whatever its size")
    ap.add_argument("--ivf-too", type=int, default=0, help="also a shard of this many rows forced to IVF")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the index (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import faiss
    import torch

    work = args.dir or Path(tempfile.mkdtemp(prefix="unite-query-bench-"))
    try:
        encoder = Encoder.load(
            tiny_model(work / "model", text=WIDE_TEXT, vision=WIDE_VISION, mrope=QWEN2VL_2B_MROPE), device="cpu"
        )
        store = IndexStore(work / "index")
        manifest = store.init(encoder.settings, IngestOptions().to_dict(), "(synthetic)")
        shards = {f"s{n}": (n, 10**9 if args.flat else None) for n in (int(x) for x in args.sizes.split(","))}
        if args.ivf_too:
            shards[f"ivf{args.ivf_too}"] = (args.ivf_too, args.ivf_too - 1)
        names = {}
        for (label, (n, flat_max)), shard in zip(shards.items(), ("image", "video", "text"), strict=False):
            t = time.perf_counter()
            fill(store, shard, n, seed=n)
            from unite_search import ann

            manifest = store.publish(manifest, [shard], flat_max=flat_max or ann.FLAT_MAX)
            names[label] = shard
            info = manifest["shards"][shard]["index"]
            print(
                f"shard {shard} ({label}): {n} rows, {info['type']} built in {time.perf_counter() - t:.0f}s", flush=True
            )

        idx = Index.open(work / "index", encoder=encoder)
        queries = [f"query {i}: a photo of something number {i * 7919 % 1000}" for i in range(args.queries)]
        print(
            f"cpu {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} threads {torch.get_num_threads()}, faiss {faiss.__version__}, {len(queries)} queries"
        )
        print(f"{'shard':<14}{'index':<12}{'ours p50':>10}{'p95':>8}{'base p50':>10}{'p95':>8}"
              f"{'over p50':>10}{'p95':>8}  target")  # fmt: skip
        results = []
        for label, shard in names.items():
            entry = manifest["shards"][shard]
            raw = idx._snapshot.readers[shard].index()
            params = (
                faiss.SearchParametersIVF(nprobe=entry["index"]["nprobe"]) if entry["index"]["type"] == "ivf" else None
            )

            def ours(q, shard=shard):
                return idx.query(text=q, target=shard, k=10)

            def base(q, raw=raw, params=params):
                vec = encoder.encode([q])
                return raw.search(vec, 10, params=params)

            for q in queries[:3]:  # warm: caches, lazily opened tables, allocator
                ours(q)
                base(q)
            t_ours, t_base = [], []
            for i, q in enumerate(queries):
                order = ((ours, t_ours), (base, t_base)) if i % 2 == 0 else ((base, t_base), (ours, t_ours))
                for fn, sink in order:
                    t = time.perf_counter()
                    fn(q)
                    sink.append(time.perf_counter() - t)
            overhead = np.asarray(t_ours) - np.asarray(t_base)
            row = {"shard": label, "rows": entry["rows"], "index": entry["index"]["type"], "ours": percentiles(t_ours),
                   "base": percentiles(t_base), "overhead": percentiles(overhead)}  # fmt: skip
            ok = all(row["ours"][p] <= 1.1 * row["base"][p] + 2.0 for p in ("p50_ms", "p95_ms"))
            row["meets_target"] = ok
            results.append(row)
            kind = entry["index"]["type"] + (
                f" np{entry['index']['nprobe']}" if entry["index"]["type"] == "ivf" else ""
            )
            print(
                f"{label:<14}{kind:<12}{row['ours']['p50_ms']:>10.1f}{row['ours']['p95_ms']:>8.1f}"
                f"{row['base']['p50_ms']:>10.1f}{row['base']['p95_ms']:>8.1f}"
                f"{row['overhead']['p50_ms']:>10.1f}{row['overhead']['p95_ms']:>8.1f}  {'met' if ok else 'MISSED'}",
                flush=True,
            )
        if args.json:
            args.json.write_text(json.dumps({"machine": platform.processor(), "cores": os.cpu_count(),
                                             "results": results}, indent=2))  # fmt: skip
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
