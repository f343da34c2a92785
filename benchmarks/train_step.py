"""Training step cost: samples/s and peak memory, with and without the gradient cache.

    python benchmarks/train_step.py                  # tiny random model on the CPU
    python benchmarks/train_step.py --random 2b      # 2B-shaped random weights (GPU), LoRA + checkpointing

Each configuration runs in a fresh process (peaks do not carry over): a warm-up step, then
``--steps`` timed steps of MAMCL with LoRA on a batch of text -> image pairs. ``--rounds`` (at least
3) such processes per configuration, the order of the configurations alternating from round to
round; samples/s and peak memory as median (min..max), with the machine and its load. Memory is the peak
resident set above the loaded model on the CPU, or ``torch.cuda.max_memory_allocated`` on a GPU.
The gradient cache is what keeps memory flat as the contrastive batch grows; its price is a second
forward pass.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import load, machine, repeats_arg, scratch, span, summary  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(args) -> dict:
    """Run one configuration in this process and return its figures."""
    import numpy as np
    import torch
    from encode_throughput import load_encoder
    from PIL import Image

    from unite_search import Item
    from unite_search.train.data import Pair
    from unite_search.train.trainer import TrainConfig, Trainer

    encoder = load_encoder(argparse.Namespace(random=args.random, model=args.model, token_budget=None, workers=None))
    gpu = encoder.device.type == "cuda"
    work = scratch("unite-bench-train-")
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(args.batch * (args.steps + 1)):
        path = work / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
        pairs.append(Pair(Item(text=f"a photo of thing number {i}"), Item(image=str(path)), 2, 2, 0))
    cfg = TrainConfig(batch_size=args.batch, lr=1e-4, grad_cache=args.cache, chunk_tokens=args.chunk_tokens,
                      max_steps=args.steps + 1)  # fmt: skip
    trainer = Trainer(encoder, pairs, cfg, work / "out")
    base = _rss_mb()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    times = []
    for step in range(args.steps + 1):
        t = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.compute_gradients(trainer.batch_at(step))
        trainer.optimizer.step()
        if gpu:
            torch.cuda.synchronize()
        if step:  # the first step warms up
            times.append(time.perf_counter() - t)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"batch": args.batch, "grad_cache": args.cache, "chunk_tokens": args.chunk_tokens,
            "samples_s": args.batch / float(np.median(times)), "peak_mb_above_model": peak - base,
            "device": str(encoder.device), "model": encoder.model_id}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a tiny random model)")
    ap.add_argument("--random", choices=["2b"], help="random weights with these shapes")
    ap.add_argument("--batches", default="16,64", help="contrastive batch sizes to try")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--chunk-tokens", type=int, default=2048, help="tokens per forward chunk with the cache")
    ap.add_argument("--rounds", type=repeats_arg, default=3, help="fresh processes per arm, alternating (>= 3)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.cache = bool(args.cache)
        print(json.dumps(one(args)))
        return
    if args.model is None and args.random is None:
        from unite_search.testing import tiny_model

        args.model = str(tiny_model(scratch("unite-bench-model-") / "tiny"))
    before, runs = load(), {}
    print(f"machine {machine()}\nload before {before}; {args.rounds} rounds, the order of the arms "
          "alternating; samples/s and peak MB: median (min..max)")  # fmt: skip
    arms = [(int(b), cache) for b in args.batches.split(",") for cache in (1, 0)]
    order = []
    for r in range(args.rounds):
        for batch, cache in arms if r % 2 == 0 else arms[::-1]:
            cmd = [sys.executable, __file__, "--one", "--batch", str(batch), "--cache", str(cache), "--steps",
                   str(args.steps), "--chunk-tokens", str(args.chunk_tokens)]  # fmt: skip
            cmd += ["--model", args.model] if args.model else ["--random", args.random]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            order.append([batch, cache])
            if done.returncode:
                print(f"{batch:>6}{'on' if cache else 'off':>12}  failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            runs.setdefault((batch, cache), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'batch':>6}{'grad cache':>12}{'samples/s':>22}{'peak MB':>22}")
    rows = []
    for (batch, cache), got in runs.items():
        rate, peak = summary([g["samples_s"] for g in got]), summary([g["peak_mb_above_model"] for g in got])
        rows.append({"batch": batch, "grad_cache": bool(cache), "samples_s": rate, "peak_mb_above_model": peak,
                     "runs": got})  # fmt: skip
        print(f"{batch:>6}{'on' if cache else 'off':>12}{span(rate):>22}{span(peak, fmt='.0f'):>22}", flush=True)
    after = load()
    print(f"load after {after}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "load_before": before, "load_after": after,
                                         "order": order, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
