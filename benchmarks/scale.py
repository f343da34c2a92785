"""A shard at scale: full build, publish after +1% and -1% rows, recall, latency and reader memory,
side by side with LanceDB's own IVF_PQ index on the same vectors in the same run.

    python benchmarks/scale.py --rows 1000000                  # 1M x 1536 (slow here: tens of minutes)
    python benchmarks/scale.py --rows 20000 --dim 128 --json   # a quick look; last line is one JSON object

Vectors: a Gaussian mixture on the unit sphere (``--centers`` clusters, ``--spread`` apart; real
embeddings cluster, and on uniform noise no ANN index beats brute force). The shard is written as an
ingest writes it (a LanceDB table of rows, ``text`` shard) and published by ``unite_search.publish``:

- ``full_build_s``: the first publish (compaction, the index chosen by the rule, trained and tuned,
  written with its sha256, the manifest swapped);
- ``publish_add_1pct_s``: the publish after 1% new rows were appended (not timed: the append, as an
  ingest's writes are timed apart from its publish);
- ``publish_remove_1pct_s``: the publish after 1% of the rows were deleted;
- then, in a fresh process so its memory is the reader's alone: ``--queries`` new vectors from the
  same mixture searched one at a time for their top 10 with their rows' columns (as ``Index.query``
  does), ``p50_ms``/``p95_ms`` (first pass; ``warm_p50_ms``/``warm_p95_ms``: the same queries again),
  ``recall_at_10`` against an exact search over the final rows, and
  ``reader_rss_mb`` (resident set after the queries; ``reader_peak_mb`` is the high-water mark);
  ``rows_fetched``: the same with the hits' rows fetched from the table for each search and only a
  key -> row map held (what a reader does above ``reader.MEMORY_ROWS`` rows).

LanceDB (``lancedb``): a table of (key, vector) with ``create_index(index_type="IVF_PQ",
metric="dot")`` at LanceDB's defaults; its ``full_build_s`` is the index build, the two publishes are
``optimize()`` after the append and after the delete (LanceDB adds new rows to its index there), and
its reader runs the same queries with ``search(q).limit(10)`` at its default nprobes (and with
``--lancedb-refine`` as a refine factor, when given). ``--skip-lancedb`` leaves it out.

Only the current and the previous published states are kept on disk (not the last hour's, as an
index keeps them): at 1M x 1536 each FAISS file is 6 GB. The run needs about 35 GB of disk there.

The timings are single runs of long operations (each is minutes at 1M rows), not alternated: read
their ratios within one run, with the machine and load recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import load, machine  # noqa: E402

CHUNK = 50_000


class Mixture:
    """Unit vectors around fixed centres; each call draws new ones (seeded, so a run is repeatable)."""

    def __init__(self, dim: int, centers: int, spread: float, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.mu = self.rng.normal(size=(centers, dim)).astype(np.float32)
        self.spread = spread

    def draw(self, n: int) -> np.ndarray:
        m = self.mu[self.rng.integers(0, len(self.mu), n)]
        v = m + self.spread * self.rng.normal(size=m.shape).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MB, from /proc."""
    got = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                got[line.split(":")[0]] = int(line.split()[1]) / 1024
    return round(got["VmRSS"], 1), round(got["VmHWM"], 1)


def _rows_table(start: int, vecs: np.ndarray, dim: int):
    import pyarrow as pa

    from unite_search.schema import row_key, row_schema

    ids = [f"r{i}" for i in range(start, start + len(vecs))]
    schema = row_schema(dim)
    cols = {
        "id": pa.array(ids),
        "key": pa.array([row_key(i) for i in ids], pa.int64()),
        "unit": pa.array(ids),
        "unit_rows": pa.array(np.ones(len(ids), np.int32)),
        "modality": pa.array(["text"] * len(ids)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
    }
    arrays = [cols.get(f.name, pa.nulls(len(ids), f.type)) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _rows_in_pieces(start: int, n: int, mix: Mixture, dim: int):
    """``n`` new rows from ``mix``, keys from ``start``, as one table of ``CHUNK``-row pieces: Lance writes
    each piece as a page of its own, and a reader holds a whole page (one table of 1,048,576 x 1536 rows
    in one piece made one 6.4 GB page, and the publish ran out of 24 GB reading it)."""
    import pyarrow as pa

    return pa.concat_tables([_rows_table(start + i, mix.draw(min(CHUNK, n - i)), dim) for i in range(0, n, CHUNK)])


def _lance_rows(table):
    import pyarrow as pa

    return pa.table({"key": table.column("key"), "vector": table.column("vector")})


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def run_reader(kind: str, folder: Path, queries_path: Path, truth_path: Path, refine: int | None) -> dict:
    """Child process: open the index cold, search every query one at a time (twice: the first pass meets
    every page cold, the second is what a warm server sees), measure."""
    queries = np.load(queries_path)
    truth = np.load(truth_path)
    found = np.full((len(queries), 10), -1, dtype=np.int64)
    if kind in ("ours", "ours-fetch"):
        from unite_search import reader as readers
        from unite_search.reader import Snapshot

        if kind == "ours-fetch":  # rows fetched from the table for each search, only a key map held
            readers.MEMORY_ROWS = 0
        reader = Snapshot.open(folder).readers["text"]
        t = time.perf_counter()
        reader.index()
        reader.meta()
        open_s = time.perf_counter() - t

        def one(q):
            hits = reader.search(q, 10, allowed=None, excluded=set())
            rows = reader.rows_of([k for k, _ in hits])
            assert len(rows) == len(hits)
            return [k for k, _ in hits]
    else:
        import lancedb

        table = lancedb.connect(str(folder)).open_table("vectors")
        t = time.perf_counter()
        table.search(queries[0]).limit(10).select(["key"]).to_arrow()  # opens the index
        open_s = time.perf_counter() - t

        def one(q):
            query = table.search(q).metric("dot").limit(10).select(["key"])
            if refine:
                query = query.refine_factor(refine)
            return query.to_arrow().column("key").to_numpy().tolist()

    passes = []
    for _ in range(2):
        times = []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            keys = one(q)
            times.append(time.perf_counter() - t)
            found[i, : len(keys)] = keys
        passes.append(np.array(times) * 1e3)
    from unite_search import ann

    rss, peak = _rss_mb()
    cold, warm = passes
    return {
        "recall_at_10": round(ann.recall_at_k(found, truth), 4),
        "p50_ms": round(float(np.percentile(cold, 50)), 3),
        "p95_ms": round(float(np.percentile(cold, 95)), 3),
        "warm_p50_ms": round(float(np.percentile(warm, 50)), 3),
        "warm_p95_ms": round(float(np.percentile(warm, 95)), 3),
        "open_s": round(open_s, 3),
        "reader_rss_mb": rss,
        "reader_peak_mb": peak,
    }


def _child(kind: str, folder: Path, work: Path, refine: int | None) -> dict:
    cmd = [sys.executable, __file__, "--reader", kind, "--dir", str(folder), "--work", str(work)]
    if refine:
        cmd += ["--lancedb-refine", str(refine)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {kind} reader failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--centers", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--flat-max", type=int, default=None, help="exact-search limit (default: the library's)")
    ap.add_argument("--index-memory", type=int, default=None, help="MB a shard index may hold (default: half the RAM)")
    ap.add_argument("--write-rows", type=int, default=CHUNK,
                    help="rows per table append; 1048576 (Lance's rows per file) leaves the first publish's "
                         "compaction nothing to rewrite, which halves the disk a large run needs")  # fmt: skip
    ap.add_argument("--skip-lancedb", action="store_true")
    ap.add_argument("--lancedb-refine", type=int, default=None)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed after)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--reader", choices=["ours", "ours-fetch", "lancedb"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reader:
        w = args.work
        truth = w / f"truth-{'lancedb' if args.reader == 'lancedb' else 'ours'}.npy"
        print(json.dumps(run_reader(args.reader, args.dir, w / "queries.npy", truth, args.lancedb_refine)))
        return

    from unite_search import ann, publish
    from unite_search import manifest as manifests
    from unite_search.store import IndexStore

    manifests.KEEP_RECENT_SECONDS = 0  # keep the current and previous states only: 6 GB a FAISS file at 1M rows

    flat_max = args.flat_max if args.flat_max is not None else ann.FLAT_MAX
    memory = args.index_memory << 20 if args.index_memory else None

    def publish_now():
        return store.publish(manifest, ["text"], flat_max=flat_max, memory=memory)

    work = args.work or Path(tempfile.mkdtemp(prefix="unite-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result: dict = {"rows": args.rows, "dim": args.dim, "machine": machine(), "load_before": load()}
    mix = Mixture(args.dim, args.centers, args.spread)
    store = IndexStore(work / "index")
    manifest = store.init({"dim": args.dim, "model_id": "synthetic", "revision": "synthetic"}, {}, "/synthetic")
    lance_db = None
    if not args.skip_lancedb:
        import lancedb

        lance_db = lancedb.connect(str(work / "lancedb"))
    say(f"writing {args.rows} x {args.dim} vectors")
    table = lance = None
    for start in range(0, args.rows, args.write_rows):
        n = min(args.write_rows, args.rows - start)
        rows = _rows_in_pieces(start, n, mix, args.dim)
        table = store.tables.open_or_create("text", args.dim)
        table.add(rows)
        if lance_db is not None:
            lance = lance_db.create_table("vectors", _lance_rows(rows)) if lance is None else lance
            if start:
                lance.add(_lance_rows(rows))
    queries = mix.draw(args.queries)
    np.save(work / "queries.npy", queries)

    say("full build")
    manifest, result["full_build_s"] = _timed(publish_now)
    info = manifest["shards"]["text"]["index"]
    result["index"] = info["factory"]
    result["full_build"] = info
    n_add = max(1, args.rows // 100)
    added = _rows_table(args.rows, mix.draw(n_add), args.dim)
    store.tables.open("text").add(added)
    say(f"publish after +{n_add}")
    manifest, result["publish_add_1pct_s"] = _timed(publish_now)
    result["after_add"] = {k: v for k, v in manifest["shards"]["text"]["index"].items() if k != "recall_curve"}
    rng = np.random.default_rng(1)
    gone = np.sort(rng.choice(args.rows + n_add, size=n_add, replace=False))
    gone_keys = [f"r{i}" for i in gone]
    from unite_search.schema import row_key, sql_list

    for i in range(0, len(gone_keys), 2000):
        store.tables.open("text").delete(f"unit IN ({sql_list(gone_keys[i : i + 2000])})")
    say(f"publish after -{n_add}")
    manifest, result["publish_remove_1pct_s"] = _timed(publish_now)
    result["after_remove"] = {k: v for k, v in manifest["shards"]["text"]["index"].items() if k != "recall_curve"}
    result["add_over_full"] = round(result["publish_add_1pct_s"] / result["full_build_s"], 4)
    result["remove_over_full"] = round(result["publish_remove_1pct_s"] / result["full_build_s"], 4)
    entry = manifest["shards"]["text"]
    result["faiss_bytes"] = entry["faiss_bytes"]

    say("exact answers for the queries")
    pinned = store.tables.open("text", entry["version"])
    truth = ann.exact_top(publish._batches(pinned, args.dim), queries, 10, _ip())
    np.save(work / "truth-ours.npy", truth)
    say("reader")
    result.update(_child("ours", store.path, work, None))
    result["rows_fetched"] = _child("ours-fetch", store.path, work, None)

    if lance_db is not None:
        say("lancedb: IVF_PQ build")
        from lancedb.index import IvfPq

        _, build_s = _timed(lambda: lance.create_index("vector", config=IvfPq(distance_type="dot")))
        lance.add(_lance_rows(added))
        _, add_s = _timed(lambda: lance.optimize())
        lance.delete(f"key IN ({', '.join(str(row_key(k)) for k in gone_keys)})")
        _, remove_s = _timed(lambda: lance.optimize())
        np.save(work / "truth-lancedb.npy", truth)  # same final rows: added, then the same ones deleted
        idx = lance.list_indices()
        result["lancedb"] = {
            "index": f"IVF_PQ ({idx[0].index_type if idx else '?'}, LanceDB defaults)",
            "full_build_s": build_s,
            "publish_add_1pct_s": add_s,
            "publish_remove_1pct_s": remove_s,
            **_child("lancedb", work / "lancedb", work, args.lancedb_refine),
        }
        if args.lancedb_refine:
            result["lancedb"]["refine_factor"] = args.lancedb_refine
    result["load_after"] = load()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    _print(result)
    if args.json:
        print(json.dumps(result))


def _ip():
    import faiss

    return faiss.METRIC_INNER_PRODUCT


def _print(r: dict) -> None:
    rows = [("unite-search", r)] + ([("lancedb", r["lancedb"])] if "lancedb" in r else [])
    m = r["machine"]
    print(
        f"{r['rows']} x {r['dim']}  {m['cpu']} ({m['cpu_count']} cores)  load {r['load_before']} -> {r['load_after']}"
    )
    heads = ("build s", "+1% s", "-1% s", "recall@10", "p50 ms", "p95 ms", "RSS MB")
    print(
        f"{'':<14}{'index':<28}"
        + "".join(f"{h:>{10 if h == 'recall@10' else 9 if h == 'build s' else 8}}" for h in heads)
    )
    for name, x in rows:
        print(
            f"{name:<14}{x['index'][:27]:<28}{x['full_build_s']:>9.1f}{x['publish_add_1pct_s']:>8.2f}"
            f"{x['publish_remove_1pct_s']:>8.2f}{x['recall_at_10']:>10.3f}{x['p50_ms']:>8.2f}{x['p95_ms']:>8.2f}"
            f"{x['reader_rss_mb']:>8.0f}"
        )


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
