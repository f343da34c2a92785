"""Successive delta publishes: what a publish of 1% new rows costs as the changes since the base file grow.

    python benchmarks/delta_series.py --rows 1000000              # 1M x 1536 (the build takes minutes)
    python benchmarks/delta_series.py --rows 20000 --dim 128 --flat-max 1000   # a quick look

One shard (vectors from ``scale.py``'s Gaussian mixture on the sphere, written as an ingest writes them)
is built, then at each of ``--steps`` steps 1% new rows are appended and ``--remove`` of the rows
deleted (half of them rows of the base, half rows added at earlier steps, once there are some), and
the shard is published twice from the same previous state, side by side:

- ``rows``: the delta index made from every row added since the base file (what a publish did before
  the previous delta was carried forward; ``publish.REUSE_DELTA = False``);
- ``carried``: the previous state's delta index carried forward, only the rows added since the last
  publish read and assigned to lists (the default).

The arms alternate which goes first. After both, their delta files are compared (the same ids in the
same lists). Each step reports both times, their ratio, and each over the full build's time. Steps
stop before the changes pass a tenth of the base (past that a publish rewrites the base instead).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from scale import Mixture, _rows_table  # noqa: E402
from timing import load, machine  # noqa: E402


def _lists(path: Path) -> list[np.ndarray]:
    """Each inverted list's ids, sorted: what a delta index holds and where."""
    import faiss

    from unite_search import ann

    index = ann.read(path)  # held: the IVF view below does not keep it alive
    ivf = faiss.extract_index_ivf(index)
    out = []
    for i in range(ivf.nlist):
        size = ivf.invlists.list_size(i)
        out.append(np.sort(faiss.rev_swig_ptr(ivf.invlists.get_ids(i), size).copy()) if size else np.empty(0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--centers", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--flat-max", type=int, default=None, help="exact-search limit (default: the library's)")
    ap.add_argument("--remove", type=float, default=0.001, help="share of the rows deleted at each step")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed after)")
    ap.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = ap.parse_args()

    from unite_search import ann, publish
    from unite_search import manifest as manifests
    from unite_search.schema import sql_list
    from unite_search.store import IndexStore

    manifests.KEEP_RECENT_SECONDS = 0  # the current and previous states only
    flat_max = args.flat_max if args.flat_max is not None else ann.FLAT_MAX
    work = args.work or Path(tempfile.mkdtemp(prefix="unite-delta-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result: dict = {"rows": args.rows, "dim": args.dim, "machine": machine(), "load_before": load(), "steps": []}
    mix = Mixture(args.dim, args.centers, 1.0)
    store = IndexStore(work / "index")
    manifest = store.init({"dim": args.dim, "model_id": "synthetic", "revision": "synthetic"}, {}, "/synthetic")
    say(f"writing {args.rows} x {args.dim} vectors")
    for start in range(0, args.rows, 50_000):
        rows = _rows_table(start, mix.draw(min(50_000, args.rows - start)), args.dim)
        store.tables.open_or_create("text", args.dim).add(rows)
    say("full build")
    t = time.perf_counter()
    manifest = store.publish(manifest, ["text"], flat_max=flat_max)
    full = result["full_build_s"] = round(time.perf_counter() - t, 3)
    result["index"] = manifest["shards"]["text"]["index"]["factory"]
    say(f"full build {full:.1f} s ({result['index']})")
    rng = np.random.default_rng(7)
    live_base = list(range(args.rows))
    live_new: list[int] = []
    next_id = args.rows
    step_rows = max(1, args.rows // 100)
    n_remove = int(args.rows * args.remove)
    for step in range(1, args.steps + 1):
        store.tables.open("text").add(_rows_table(next_id, mix.draw(step_rows), args.dim))
        live_new += range(next_id, next_id + step_rows)
        next_id += step_rows
        from_new = n_remove // 2 if step > 1 else 0
        at_base = sorted(rng.choice(len(live_base), n_remove - from_new, replace=False), reverse=True)
        at_new = sorted(rng.choice(len(live_new) - step_rows, from_new, replace=False), reverse=True)  # earlier steps'
        gone = [live_base.pop(int(i)) for i in at_base] + [live_new.pop(int(i)) for i in at_new]
        names = [f"r{i}" for i in gone]
        for i in range(0, len(names), 2000):
            store.tables.open("text").delete(f"unit IN ({sql_list(names[i : i + 2000])})")
        # a small table is compacted at every publish: done here, so that neither arm pays for it
        store.tables.compact("text", [manifest["shards"]["text"]["version"]])
        times, deltas = {}, {}
        arms = ["rows", "carried"] if step % 2 else ["carried", "rows"]
        for arm in arms:
            publish.REUSE_DELTA = arm == "carried"
            os.sync()
            t = time.perf_counter()
            published = store.publish(manifest, ["text"], flat_max=flat_max)
            times[arm] = round(time.perf_counter() - t, 3)
            entry = published["shards"]["text"]
            if entry["index"]["built"] != "delta":
                built = entry["index"]["built"]
                raise SystemExit(f"step {step}: the publish was {built!r}, not a delta: ask for fewer --steps")
            deltas[arm] = (_lists(store.path / entry["delta"]["faiss"]), entry["index"]["delta"])
        same = all(np.array_equal(a, b) for a, b in zip(deltas["rows"][0], deltas["carried"][0], strict=True))
        if not same:
            raise SystemExit(f"step {step}: the two arms' delta indexes differ")
        manifest = published
        row = {
            "step": step,
            "first": arms[0],
            "delta": deltas["carried"][1],
            "rows_s": times["rows"],
            "carried_s": times["carried"],
            "rows_over_carried": round(times["rows"] / times["carried"], 2),
            "rows_over_full": round(times["rows"] / full, 4),
            "carried_over_full": round(times["carried"] / full, 4),
        }
        result["steps"].append(row)
        say(json.dumps(row))
    result["load_after"] = load()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.rows} x {args.dim}  {result['index']}  full build {full:.1f} s  load {result['load_before']} -> "
          f"{result['load_after']}  ({result['machine']['cpu']}, {result['machine']['cpu_count']} cores)")  # fmt: skip
    heads = [("step", 4), ("added", 9), ("kept", 9), ("removed", 9), ("rows s", 9), ("carried s", 11), ("ratio", 7)]
    print("".join(f"{h:>{w}}" for h, w in heads) + f"{'carried/full':>14}")
    for r in result["steps"]:
        d = r["delta"]
        print(f"{r['step']:>4}{d['added']:>9}{d['kept']:>9}{d['removed']:>9}{r['rows_s']:>9.2f}{r['carried_s']:>11.2f}"
              f"{r['rows_over_carried']:>7.2f}{r['carried_over_full']:>14.2%}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
