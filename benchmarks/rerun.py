"""A rerun of ``unite-search ingest`` over a folder where nothing changed: wall time, from the command line.

    python benchmarks/rerun.py                     # 2,000 files (1,200 texts, 760 photos, 40 clips)
    python benchmarks/rerun.py --files 20000       # more (the same mix, scaled)

A tiny random model and a generated corpus in a temporary folder, indexed once by the CLI. Then three
kinds of rerun, each a fresh ``python -m unite_search.cli ingest CORPUS --index INDEX --model MODEL
--quiet`` process (interpreter start and imports included, as a user waits for them):

- ``no-op``: nothing changed since the last clean run;
- ``full pass``: nothing changed, but the index carries ``ingest.writing`` (as a run killed before
  it published leaves it), so the run reads the file cache, diffs every shard and publishes nothing;
- ``touched``: one file's mtime moved (same bytes): the same full pass, for a reason a user meets.

Timed with ``benchmarks/timing.py`` (one warm-up each, ``--repeats`` alternating rounds, median and
range). Each run's report (``--json``) says whether it read files (``timings.read``) and loaded the
model (``timings.load``). Target (issue: honest, fast pipeline): the no-op rerun of 2,000 files under
2 s, with no model load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from timing import compare, load, machine, repeats_arg, span  # noqa: E402


def make_corpus(root: Path, files: int) -> dict[str, int]:
    from corpora import write_clip, write_photo

    texts, clips = files * 6 // 10, max(1, files // 50)
    photos = files - texts - clips
    for i in range(texts):
        folder = root / "notes" / f"d{i // 200:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"n{i:05d}.txt").write_text(f"note {i}: " + "river stone lantern " * (5 + i % 20))
    for i in range(photos):
        write_photo(root / "photos" / f"d{i // 200:03d}" / f"p{i:05d}.jpg", seed=i, size=(64 + i % 32, 48 + i % 16))
    for i in range(clips):
        write_clip(root / "clips" / f"c{i:04d}.mp4", 16, fps=8, seed=i)
    return {"texts": texts, "photos": photos, "clips": clips}


def cli(corpus: Path, index: Path, model: Path) -> dict:
    cmd = [sys.executable, "-m", "unite_search.cli", "ingest", str(corpus), "--index", str(index),
           "--model", str(model), "--quiet", "--json"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"ingest failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeats", type=repeats_arg, default=5)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from unite_search.testing import tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="unite-rerun-bench-"))
    try:
        model = tiny_model(tmp / "model", seed=0)
        corpus = tmp / "corpus"
        mix = make_corpus(corpus, args.files)
        index = tmp / "index"
        first = cli(corpus, index, model)
        print(f"{args.files} files {mix}: first ingest {first['timings']['total']:.1f} s "
              f"(encoded {first['encoded_items']} items)", flush=True)  # fmt: skip
        reports: dict[str, list] = {"no-op": [], "full pass": [], "touched": []}
        touched = next(corpus.glob("photos/*/*.jpg"))
        stamp = [1_000_000_000]

        def noop():
            reports["no-op"].append(cli(corpus, index, model))

        def full_pass():
            (index / "ingest.writing").touch()
            reports["full pass"].append(cli(corpus, index, model))

        def touch():
            stamp[0] += 1_000_000_000
            os.utime(touched, ns=(stamp[0], stamp[0]))
            reports["touched"].append(cli(corpus, index, model))

        before = load()
        res = compare({"no-op": noop, "full pass": full_pass, "touched": touch}, repeats=args.repeats)
        after = load()
        print(f"machine {machine()}\nload before {before}, after {after}; seconds, median (min..max) over "
              f"{args.repeats} alternating rounds, a new process each")  # fmt: skip
        rows = {}
        for name in ("no-op", "full pass", "touched"):
            timed = reports[name][-args.repeats :]
            read = sorted({"read" in r["timings"] for r in timed})
            loads = sorted({r["timings"].get("load", 0.0) for r in timed})
            encoded = sorted({r["encoded_items"] for r in timed})
            rows[name] = {"wall_s": {k: res[name][k] for k in ("median", "min", "max")}, "times": res[name]["times"],
                          "read_files": read, "load_s": loads, "encoded_items": encoded,
                          "in_process_total_s": [r["timings"]["total"] for r in timed]}  # fmt: skip
            print(f"{name:<10} {span(res[name], fmt='.2f'):>22} s   read files {read}, model load {loads} s, "
                  f"encoded {encoded}")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "load_before": before, "load_after": after,
                                             "files": args.files, "mix": mix, "repeats": args.repeats,
                                             "order": res["order"], "results": rows}, indent=2))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
