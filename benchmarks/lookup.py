"""Row lookup at scale: what a reader of a shard above ``reader.MEMORY_ROWS`` rows pays to fetch its
hits' rows from the pinned table version, through the Lance dataset (``lance``) and through LanceDB's
``take_offsets`` (``lancedb``), side by side.

    python benchmarks/lookup.py --rows 10000000             # 10M rows (about 4 minutes to write here)
    python benchmarks/lookup.py --rows 200000 --json        # a quick look; last line is one JSON object

The table is written as an ingest writes it: batches of rows with every column of the row schema
(short ``text`` in each row, as a text shard's passages), appended one commit each, then compacted as
a shard's first publish compacts it. A lookup is ``ShardReader.rows_of`` on ``--k`` random keys with
its row cache emptied first: key -> offset by the reader's sorted key map, the take, the rows as
dicts. The vectors are never read by a lookup (each column is stored apart), so ``--dim`` defaults to
16: a 10M x 1536 table is 62 GB, more than this machine's free disk, and its lookups would read the
same bytes.

Arms alternate by round (lance, lancedb, then lancedb, lance, ...), each round running ``--lookups``
lookups on the same keys for both; every lookup's time is kept, and p50/p95 are over all of them,
with each round's p50 ratio (lancedb / lance) as the range.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import load, machine, repeats_arg

from unite_search import reader as readers
from unite_search.reader import Snapshot
from unite_search.schema import row_key
from unite_search.store import IndexStore

BATCH = 100_000


def rows(start: int, n: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        name = f"notes/file{i // 8}.txt#{i % 8}"
        out.append({
            "id": name, "key": row_key(name), "unit": f"u{i // 8}", "unit_rows": 8, "modality": "text",
            "source": "file", "path": f"notes/file{i // 8}.txt", "paths": [f"notes/file{i // 8}.txt"],
            "content_hash": f"{i // 8:064x}", "size": 4000 + i % 97, "mtime": 1.7e9 + i,
            "char_start": (i % 8) * 500, "char_end": (i % 8) * 500 + 480,
            "text": f"passage {i}: " + "harbour gulls water dawn " * 18,
        })  # fmt: skip
    return out


def build(folder: Path, n: int, dim: int) -> tuple[IndexStore, list[int]]:
    store = IndexStore(folder)
    manifest = store.init({"dim": dim, "model_id": "m", "revision": "r"}, {}, "/corpus")
    rng = np.random.default_rng(0)
    for start in range(0, n, BATCH):
        size = min(BATCH, n - start)
        vecs = rng.standard_normal((size, dim), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.tables.add_rows("text", rows(start, size), vecs)
        print(f"  wrote {start + size:,} rows", file=sys.stderr, flush=True)
    store.publish(manifest, ["text"], flat_max=max(n + 1, 100_000))  # exact index: the lookup is what is timed
    return store


def reusable(folder: Path, n: int, dim: int) -> bool:
    """An index this script built earlier with the same rows and dim (``--work``)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return manifest["shards"]["text"]["rows"] == n and manifest["shards"]["text"]["dim"] == dim
    except (OSError, ValueError, KeyError, TypeError):
        return False


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--k", type=int, default=10, help="rows fetched by one lookup (a search's hits)")
    ap.add_argument("--lookups", type=int, default=200, help="lookups per arm per round")
    ap.add_argument("--rounds", type=repeats_arg, default=4)
    ap.add_argument(
        "--work",
        type=Path,
        help="folder for the index, kept; an index of --rows rows already there is reused "
        "(default: a temporary one, removed)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="unite-lookup-"))
    result = {"rows": args.rows, "dim": args.dim, "k": args.k, "machine": machine(), "load_before": load()}
    try:
        t = time.perf_counter()
        if reusable(work / "index", args.rows, args.dim):
            store = IndexStore(work / "index")
            print(f"  reusing the index in {work / 'index'}", file=sys.stderr)
        else:
            shutil.rmtree(work / "index", ignore_errors=True)
            store = build(work / "index", args.rows, args.dim)
            result["write_s"] = round(time.perf_counter() - t, 1)
        # the gigabytes just written are still being flushed to disk; lookups timed meanwhile would
        # measure the flush (p95 up by ~2 ms at 10M rows), not the reader
        os.sync()
        time.sleep(5)
        result["load_before"] = load()
        readers.MEMORY_ROWS = 0  # the reader of a large shard: a key map, rows fetched for hits
        arms = {name: Snapshot.open(store.path).readers["text"] for name in ("lance", "lancedb")}
        arms["lancedb"]._dataset = False  # LanceDB's take_offsets, as before the dataset was used
        for reader in arms.values():
            reader.meta()
        result["fragments"] = len(arms["lance"]._lance().get_fragments())
        keys = arms["lance"].meta().sorted_keys
        rng = np.random.default_rng(1)
        times: dict[str, list[float]] = {name: [] for name in arms}
        ratios = []
        per_round = []  # each round's p50 and p95 (ms) for each arm
        for r in range(args.rounds + 1):  # round 0 warms both up and is not kept
            picks = [rng.choice(keys, args.k, replace=False).tolist() for _ in range(args.lookups)]
            order = list(arms) if r % 2 else list(arms)[::-1]
            got: dict[str, list[float]] = {}
            for name in order:
                reader = arms[name]
                spent = []
                for wanted in picks:
                    reader._rows.clear()
                    start = time.perf_counter()
                    found = reader.rows_of(wanted)
                    spent.append(time.perf_counter() - start)
                    assert len(found) == len(set(wanted))
                got[name] = spent
            if r:
                for name in arms:
                    times[name] += got[name]
                ratios.append(statistics.median(got["lancedb"]) / statistics.median(got["lance"]))
                per_round.append({name: [round(percentile(got[name], q) * 1000, 2) for q in (50, 95)] for name in arms})
        for name, spent in times.items():
            result[name] = {"p50_ms": round(percentile(spent, 50) * 1000, 2),
                            "p95_ms": round(percentile(spent, 95) * 1000, 2), "lookups": len(spent)}  # fmt: skip
        result["per_round"] = per_round
        result["lancedb_over_lance"] = {"median": round(statistics.median(ratios), 2),
                                        "min": round(min(ratios), 2), "max": round(max(ratios), 2)}  # fmt: skip
        result["load_after"] = load()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for name in ("lance", "lancedb"):
        print(f"{name:8s} p50 {result[name]['p50_ms']:.2f} ms  p95 {result[name]['p95_ms']:.2f} ms")
    print(f"lancedb / lance: {result['lancedb_over_lance']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
