"""Where ``Encoder.encode`` spends its time on one kind of input, next to the plain loop, twice.

    python benchmarks/encode_breakdown.py --random 2b [--kind text] [--n 512]

Times, in one process: ``encode()``; the plain loop; preparation alone (serial and on the thread
pool); ``encode_prepared`` on pre-made inputs; single forward batches. The first repetition shows
what first sight of new batch shapes costs (kernel choice, allocator growth); the second, the
steady state.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from encode_throughput import load_encoder, make_inputs, plain_loop  # noqa: E402

from unite_search.batching import bounded_map, plan_batches  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder, alias or hub id (default: a tiny random model)")
    ap.add_argument("--random", choices=["2b"], help="random weights with these shapes (no download)")
    ap.add_argument("--kind", choices=["text", "image", "video"], default="text")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--plain-batch", type=int, default=256)
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    import torch

    enc = load_encoder(args)
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    items = make_inputs(args.n)[args.kind]

    def timed(name, fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        dt = time.perf_counter() - t
        print(f"{name:<44}{dt * 1e3:9.1f} ms  {len(items) / dt:8.1f} items/s", flush=True)
        return out

    enc.encode(items[:64])
    plain_loop(enc, args.kind, items[:64], args.plain_batch)
    for rep in range(2):
        print(f"--- repetition {rep}")
        timed("encode()", lambda: enc.encode(items))
        timed(f"plain loop, batch {args.plain_batch}", lambda: plain_loop(enc, args.kind, items, args.plain_batch))
        prepared = timed("prepare, serial", lambda: [enc.prepare(it) for it in items])
        timed(f"prepare, {enc.workers} threads", lambda: list(bounded_map(enc.prepare, items, enc.workers, 32)))
        timed(f"encode_prepared (budget {enc.token_budget})", lambda prepared=prepared: enc.encode_prepared(prepared))
        groups = plan_batches([p.length for p in prepared], enc.token_budget)
        print(f"batches {[len(g) for g in groups]}, lengths {sorted({p.length for p in prepared})[:8]}")
        for g in groups[:2]:
            timed(
                f"  one forward, {len(g)} items", lambda g=g, prepared=prepared: enc.forward([prepared[i] for i in g])
            )


if __name__ == "__main__":
    main()
