"""Peak memory of a shard's full index build (``ann.build`` over a LanceDB table), for one or more
source trees side by side.

    python benchmarks/build_memory.py --rows 1000000 --index-memory 1000 --src . --src /tmp/old

The table (``--rows`` x ``--dim`` vectors from ``scale.py``'s mixture, in 50,000-row pieces) is written
once; then each repeat builds the index once per ``--src`` (a folder holding ``unite_search``), each
in a fresh process, the order alternating between repeats. Each build reports its seconds, the
process's peak resident set (``VmHWM``) and its resident set before the build began (the table opened,
nothing read), the index kind and its estimated size. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from timing import load, machine, repeats_arg

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import unite_search
from unite_search import ann, publish
from unite_search.store import IndexStore

def status(field):
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith(field + ":"))

store = IndexStore(sys.argv[2])
table = store.tables.open("text")
n, dim, memory = table.count_rows(), int(sys.argv[3]), int(sys.argv[4]) << 20
before = status("VmRSS")
t = time.perf_counter()
index, info = ann.build(publish._batches(table, dim), n, dim, memory=memory, gpu=False)
build_s = round(time.perf_counter() - t, 2)
print(json.dumps({"src": unite_search.__file__.rsplit("/", 2)[0], "build_s": build_s, "rss_before_mb": before,
                  "peak_mb": status("VmHWM"), "factory": info["factory"], "index_mb": info["memory_bytes"] >> 20,
                  "trained_on": info.get("trained_on"), "recall_at_10": info.get("recall_at_10")}))  # (flat: none)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--index-memory", type=int, default=1000, help="MB the index may hold (1000: SQ4 at 1M x 1536)")
    ap.add_argument("--src", action="append", type=Path, help="a folder holding unite_search (repeatable)")
    ap.add_argument("--repeats", type=repeats_arg, default=3)
    args = ap.parse_args()
    srcs = [s.resolve() for s in (args.src or [Path(__file__).resolve().parent.parent])]

    from scale import Mixture, _rows_in_pieces

    from unite_search.store import IndexStore

    result: dict = {"rows": args.rows, "dim": args.dim, "machine": machine(), "load_before": load(), "builds": []}
    with tempfile.TemporaryDirectory(prefix="unite-build-memory-") as work:
        store = IndexStore(Path(work) / "index")
        store.init({"dim": args.dim, "model_id": "synthetic", "revision": "synthetic"}, {}, "/synthetic")
        mix = Mixture(args.dim, 2000, 1.0)
        table = store.tables.open_or_create("text", args.dim)
        for start in range(0, args.rows, 1_048_576):
            table.add(_rows_in_pieces(start, min(1_048_576, args.rows - start), mix, args.dim))
        for r in range(args.repeats):
            for src in srcs if r % 2 == 0 else srcs[::-1]:
                cmd = [sys.executable, "-c", CHILD, str(src), str(store.path), str(args.dim), str(args.index_memory)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"the build with unite_search from {src} failed:\n{out.stderr[-2000:]}")
                build = json.loads(out.stdout.strip().splitlines()[-1])
                result["builds"].append(build)
                print(f"{build['src']}: {build['factory']} {build['build_s']} s, peak {build['peak_mb']} MB "
                      f"(before {build['rss_before_mb']}, index ~{build['index_mb']})", file=sys.stderr)  # fmt: skip
    result["load_after"] = load()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
