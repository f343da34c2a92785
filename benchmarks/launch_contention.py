"""Does decoding slow the thread that launches the model's work? Decode threads against decode processes.

    python benchmarks/launch_contention.py --kinds image --workers 2 --repeats 5
    python benchmarks/launch_contention.py --kinds image,video --workers 8 --json out.json   # on the GPU machine

On a GPU the thread that runs the forward spends most of its time launching kernels: one short call
into torch per operator, each giving up the interpreter lock (the GIL) and taking it back. Decode threads
take the same lock between their decoder calls. This script puts a number on that contention without a
GPU: a "launch" loop of short torch operators on a small CPU tensor (``--ops`` of them, one thread,
about a second alone) is timed

- alone;
- beside ``--workers`` threads preparing issue 17's inputs from files (``Encoder.prepare``, as the
  encoder's decode threads do) without pause;
- beside the same threads with the speed switch ``processes`` on (each thread hands its file to a
  decoding process and waits without the lock).

Reported per arm: the launch loop's time (median, min..max over ``--repeats`` alternating rounds, each
arm warmed up once), its slowdown against "alone" in the same round, and the items the decoders
prepared per second meanwhile. With more busy threads than cores (``--workers`` + 1 above the core
count) every arm also shares the cores: read the gap between threads and processes, not the slowdown
alone. Machine and load average are printed and written to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from encode_throughput import file_inputs, load_encoder  # noqa: E402
from timing import compare, load, machine, repeats_arg, span, summary  # noqa: E402


def launch_loop(ops: int) -> float:
    """``ops`` short torch calls on one thread (as a forward's kernel launches); seconds taken."""
    import torch

    x = torch.zeros(16)
    t = time.perf_counter()
    for _ in range(ops):
        x.add_(1.0)
    return time.perf_counter() - t


class Decoders:
    """``n`` threads preparing ``items`` with ``encoder`` in a loop until stopped; counts what they made."""

    def __init__(self, encoder, items, n: int):
        self.encoder, self.items, self.count = encoder, items, 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, first: int) -> None:
        i = first
        while not self.stop.is_set():
            self.encoder.prepare(self.items[i % len(self.items)])
            i += 1
            with self.lock:
                self.count += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        deadline = time.perf_counter() + 30  # running at full speed: every thread has made an item
        while self.count < len(self.threads) and time.perf_counter() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder, alias or hub id (default: a tiny random model)")
    ap.add_argument("--kinds", default="image,video", help="image, video or both, comma-separated")
    ap.add_argument("--n", type=int, default=16, help="distinct input files the decoders cycle through")
    ap.add_argument("--workers", type=int, default=2, help="decode threads (and processes)")
    ap.add_argument("--ops", type=int, default=400_000, help="torch calls in the launch loop")
    ap.add_argument("--repeats", type=repeats_arg, default=5, help="alternating rounds (at least 3)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.random, args.token_budget = None, None  # load_encoder's other options: the tiny model on the CPU

    import torch

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"image", "video"}:
        raise SystemExit(f"--kinds: image, video or both, not {args.kinds!r}")
    load_before = load()
    work = Path(tempfile.mkdtemp(prefix="unite-contention-"))
    out = {"machine": machine(), "load_before": load_before, "args": vars(args) | {"json": str(args.json)}}
    try:
        encoder = load_encoder(args)
        print(f"torch {torch.__version__}, {args.workers} decoders, {args.ops} calls; machine {out['machine']}; "
              f"load {load_before}", flush=True)  # fmt: skip
        for kind in kinds:
            out[kind] = one_kind(args, encoder, work / kind, kind)
            out["load_after"] = load()
            if args.json:  # after every kind: a run cut short keeps the kinds it finished
                args.json.write_text(json.dumps(out, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def one_kind(args, encoder, folder: Path, kind: str) -> dict:
    """The three arms on ``args.n`` files of one kind; prints the table and returns its rows."""
    inputs, encoder = file_inputs(encoder, folder, {kind: args.n}, 32)
    items = inputs[kind]
    procs = encoder.with_settings(speed=dataclasses.replace(encoder.speed, processes=True))
    inner: dict[str, list[tuple[float, float]]] = {}  # arm -> (launch seconds, decoded items/s) per call

    def arm(name: str, enc):
        def run():
            if enc is None:
                inner.setdefault(name, []).append((launch_loop(args.ops), 0.0))
                return
            with Decoders(enc, items, args.workers) as d:
                c0 = d.count
                s = launch_loop(args.ops)
                inner.setdefault(name, []).append((s, (d.count - c0) / s))

        return run

    threads, processes = f"beside {args.workers} decode threads", f"beside {args.workers} decode processes"
    arms = {"alone": arm("alone", None), threads: arm(threads, encoder), processes: arm(processes, procs)}
    res = compare(arms, repeats=args.repeats, warmup=1)
    timed = {name: inner[name][-args.repeats :] for name in arms}
    alone = [s for s, _ in timed["alone"]]
    print(f"\n{kind}: launch loop of {args.ops} calls; median (min..max) of {args.repeats} alternating rounds; "
          f"load {load()}")  # fmt: skip
    print(f"{'arm':<34}{'launch loop s':>24}{'x alone':>22}{kind + 's decoded /s':>26}")
    rows: dict = {"order": res["order"]}
    for name in arms:
        secs = [s for s, _ in timed[name]]
        row = {
            "launch_s": summary(secs),
            "x_alone": summary([s / a for s, a in zip(secs, alone, strict=True)]),
            "decoded_items_s": summary([r for _, r in timed[name]]),
            "calls": timed[name],
        }
        rows[name] = row
        print(f"{name:<34}{span(row['launch_s'], fmt='.3f'):>24}{span(row['x_alone'], fmt='.2f'):>22}"
              f"{span(row['decoded_items_s']):>26}", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
