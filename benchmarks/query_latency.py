"""Query latency: ``Index.query`` next to the bare minimum (encode the query + raw FAISS search), and the
cost of ``like=``, same run.

    python benchmarks/query_latency.py                      # shards of 100k and 1M (about 13 GB of disk)
    python benchmarks/query_latency.py --sizes 20000,200000 # smaller

Shards of random unit vectors (dim 1536, the 2B models' width) are written straight into an index
(LanceDB rows with path, size and width columns; FAISS by the index's own rule, or forced exact with
``--flat``). The query encoder is a random one-layer Qwen2-VL with 1536-wide vectors, so encoding is
real but cheap on a CPU. Four arms per shard, each a pass over the same ``--queries`` queries:

- ``text``: ``Index.query(text=q, target=shard, k=10)`` on a warm encoder: plan, encode, search, fetch
  the rows' metadata (held in memory; on the text shard, each hit's text is read from the table), merge;
- ``base``: ``encoder.encode([q])`` and ``faiss_index.search(vector, 10)`` on the same FAISS index;
- ``vector``: ``Index.query_batch([{"text": q, ...}], vectors=[v])`` with ``v`` computed beforehand:
  the ``text`` arm's search path without the encoder;
- ``like``: ``Index.query(like=row_id, k=10)`` for rows of that shard: the stored vector is read from the
  FAISS index in memory, then the same search path.

Timing (benchmarks/timing.py ``compare``): each arm first makes one untimed pass over the queries
(caches, lazily opened tables, the IVF direct map, the allocator), then ``--repeats`` rounds (default 5,
at least 3) run the arms in alternating order (text base vector like stored, stored like vector base text, ...), each
query timed on its own. Per arm: the p50 and p95 of each round's per-query latencies, reported as median
(min..max) over the rounds. Overheads are taken per round (p50 or p95 of one arm minus the other's in
the same round), median (min..max) over rounds:

- ``text - base``: what the planner, the metadata fetch and the merge cost. Target: ``text`` at most 10%
  of ``base`` plus 2 ms, at p50 and p95 (medians over rounds);
- ``like - stored``: the extra latency of a ``like=`` query (find the row, take its stored vector,
  leave the row out) over the very same search given that vector and ``exclude=`` by hand (the
  ``stored`` arm). Target: at most 2 ms, at p50 and p95. ``like - vector`` (a text's precomputed vector
  instead) is recorded too: its searches differ, so it carries their difference as well.

The machine (CPU, cores, torch and its threads), the load average before and after, and the arguments
are printed and written to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import compare, load, machine, repeats_arg, span, summary  # noqa: E402

from unite_search import Encoder, Index  # noqa: E402
from unite_search.schema import row_key  # noqa: E402
from unite_search.store import IndexStore  # noqa: E402
from unite_search.testing import QWEN2VL_2B_MROPE, TINY_TEXT, TINY_VISION, tiny_model  # noqa: E402
from unite_search.units import IngestOptions  # noqa: E402

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


ARMS = ("text", "base", "vector", "like", "stored")
PCTS = {"p50_ms": 50, "p95_ms": 95}


def rounds(samples: list[list[float]], warmup: int, q: float) -> list[float]:
    """The ``q``-th percentile (ms) of each timed round's per-query latencies (warm-up passes dropped)."""
    return [float(np.percentile(np.asarray(s) * 1e3, q)) for s in samples[warmup:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="rows per shard, comma-separated")
    ap.add_argument("--queries", type=int, default=50, help="queries per pass (one pass per arm and round)")
    ap.add_argument("--repeats", type=repeats_arg, default=5, help="timed rounds per shard, alternating (>= 3)")
    ap.add_argument("--flat", action="store_true", help="exact search on every shard, whatever its size")
    ap.add_argument("--ivf-too", type=int, default=0, help="also a shard of this many rows forced to IVF")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the index (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import faiss
    import torch

    load_before = load()
    work = args.dir or Path(tempfile.mkdtemp(prefix="unite-query-bench-"))
    try:
        encoder = Encoder.load(
            tiny_model(work / "model", text=WIDE_TEXT, vision=WIDE_VISION, mrope=QWEN2VL_2B_MROPE), device="cpu"
        )
        store = IndexStore(work / "index")
        manifest = store.init(encoder.settings, IngestOptions().to_dict(), "(synthetic)")
        sizes = [int(x) for x in args.sizes.split(",")]
        shards = {f"s{n}": (n, 10**9 if args.flat else None) for n in sizes}
        if args.ivf_too:
            shards[f"ivf{args.ivf_too}"] = (args.ivf_too, args.ivf_too - 1)
        if len(shards) > 3 or len(shards) < len(sizes) + bool(args.ivf_too):  # one shard each: image, video, text
            raise SystemExit("at most 3 shards in all (--sizes and --ivf-too), of different sizes")
        names = {}
        for (label, (n, flat_max)), shard in zip(shards.items(), ("image", "video", "text"), strict=False):
            t = time.perf_counter()
            fill(store, shard, n, seed=n)
            from unite_search import ann

            manifest = store.publish(manifest, [shard], flat_max=flat_max or ann.FLAT_MAX)
            names[label] = shard
            built = manifest["shards"][shard]["index"]
            print(
                f"shard {shard} ({label}): {n} rows, {built['type']} built in {time.perf_counter() - t:.0f}s",
                flush=True,
            )

        idx = Index.open(work / "index", encoder=encoder)
        queries = [f"query {i}: a photo of something number {i * 7919 % 1000}" for i in range(args.queries)]
        vectors = [encoder.encode([q])[0] for q in queries]  # the vector arm's inputs, made beforehand
        info = machine()
        load_start = load()
        print(
            f"cpu {info['cpu']}, {info['cpu_count']} cores, torch {torch.__version__} threads "
            f"{torch.get_num_threads()}, faiss {faiss.__version__}, {len(queries)} queries x {args.repeats} "
            f"rounds (+1 warm-up pass), load {load_start}"
        )
        print("per-query ms: p50 / p95 of each round, median (min..max) over rounds; overheads taken per round")
        results = []
        for label, shard in names.items():
            entry = manifest["shards"][shard]
            n_rows = entry["rows"]
            raw = idx._snapshot.readers[shard].index()
            params = (
                faiss.SearchParametersIVF(nprobe=entry["index"]["nprobe"]) if entry["index"]["type"] == "ivf" else None
            )
            like_ids = [f"{shard}-{i * 7919 % n_rows:07d}" for i in range(len(queries))]
            reader = idx._snapshot.readers[shard]
            stored = [reader.vector(row_key(rid)).copy() for rid in like_ids]
            calls = {
                "text": [lambda q=q, shard=shard: idx.query(text=q, target=shard, k=10) for q in queries],
                "base": [
                    lambda q=q, raw=raw, params=params: raw.search(encoder.encode([q]), 10, params=params)
                    for q in queries
                ],
                "vector": [
                    lambda q=q, v=v, shard=shard: idx.query_batch([{"text": q, "target": shard, "k": 10}], vectors=[v])
                    for q, v in zip(queries, vectors, strict=True)
                ],
                "like": [lambda rid=rid: idx.query(like=rid, k=10) for rid in like_ids],
                # the same searches as like=, the stored vectors handed over and the row left out by hand
                "stored": [
                    lambda rid=rid, v=v, shard=shard: idx.query_batch(
                        [{"text": "stored", "target": shard, "k": 10, "exclude": [rid]}], vectors=[v]
                    )
                    for rid, v in zip(like_ids, stored, strict=True)
                ],
            }
            samples: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}

            def run_pass(arm, calls=calls, samples=samples):
                times = []
                for fn in calls[arm]:
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
                samples[arm].append(times)

            timing = compare({arm: (lambda arm=arm: run_pass(arm)) for arm in ARMS}, repeats=args.repeats, warmup=1)
            w = timing["warmup"]
            per_round = {arm: {p: rounds(samples[arm], w, q) for p, q in PCTS.items()} for arm in ARMS}
            stats = {arm: {p: summary(v) for p, v in per_round[arm].items()} for arm in ARMS}

            def over(a, b, per_round=per_round):
                return {
                    p: summary([x - y for x, y in zip(per_round[a][p], per_round[b][p], strict=True)]) for p in PCTS
                }

            overhead = {"text_minus_base": over("text", "base"), "like_minus_stored": over("like", "stored"),
                        "like_minus_vector": over("like", "vector")}  # fmt: skip
            meets = {
                "text": all(
                    stats["text"][p]["median"] <= 1.1 * stats["base"][p]["median"] + 2.0 for p in ("p50_ms", "p95_ms")
                ),
                "like": all(overhead["like_minus_stored"][p]["median"] <= 2.0 for p in ("p50_ms", "p95_ms")),
            }
            kind = entry["index"]["type"] + (
                f" np{entry['index']['nprobe']}" if entry["index"]["type"] == "ivf" else ""
            )
            print(f"\nshard {label} ({shard}, {n_rows} rows, {kind})", flush=True)
            print(f"{'arm':<16}{'p50 ms':>22}{'p95 ms':>22}")
            for arm in ARMS:
                print(f"{arm:<16}" + "".join(f"{span(stats[arm][p], fmt='.2f'):>22}" for p in PCTS))
            for name, key, target, ok in (
                ("text - base", "text_minus_base", "text <= 1.1 x base + 2 ms", meets["text"]),
                ("like - stored", "like_minus_stored", "like - stored <= 2 ms", meets["like"]),
            ):
                print(
                    f"{name:<16}"
                    + "".join(f"{span(overhead[key][p], fmt='.2f'):>22}" for p in PCTS)
                    + f"  {target}: {'met' if ok else 'MISSED'}",
                    flush=True,
                )
            results.append({"shard": label, "table": shard, "rows": n_rows, "index": entry["index"]["type"],
                            "arms": stats, "per_round_ms": per_round, "overhead": overhead, "meets_target": meets,
                            "passes": {arm: timing[arm] for arm in ARMS}, "order": timing["order"]})  # fmt: skip
        load_after = load()
        print(f"\nload before {load_before}  at the first round {load_start}  after {load_after}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "faiss": faiss.__version__,
                        "load_before": load_before,
                        "load_start": load_start,
                        "load_after": load_after,
                        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                        "queries": len(queries),
                        "results": results,
                    },
                    indent=2,
                )
            )
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
