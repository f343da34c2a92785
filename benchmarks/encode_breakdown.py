"""Where ``Encoder.encode`` spends its time on one kind of input, next to the plain loop.

    python benchmarks/encode_breakdown.py --random 2b [--kind text] [--n 512] [--repeats 5]
    python benchmarks/encode_breakdown.py --kind video --from-files --workers 2   # host cost of a clip

``--from-files`` reads issue 17's inputs from disk (448x448 JPEGs, 8-frame MP4s at a fixed 8 frames, texts
of ``--text-tokens`` tokens; see encode_throughput.py), so preparation includes reading and decoding.

Times, in one process, three groups of arms on the same items:

1. ``encode()`` and the plain loop (fixed batch, see encode_throughput.py);
2. preparation alone: ``prepare`` serially; ``Encoder.prepare_many`` in chunks of 64 (one tokenizer
   call per chunk); ``prepare`` on the thread pool (``bounded_map``, ``workers`` threads), with its
   speed-up over the serial arm (how far the pool scales: what decoding can feed on a bigger machine);
   with ``--from-files`` for images and videos, both again with the speed switch ``processes`` (each
   file decoded in a worker process), their pixels checked against the serial arm's;
3. ``encode_prepared`` on pre-made inputs, and the first two single forward batches it plans.

Timing (benchmarks/timing.py ``compare``): within a group, every arm first runs once untimed on the
timed items (first sight of a batch shape costs kernel choice and allocator growth; that first call is
shown as "first call"), then ``--repeats`` rounds (default 5, at least 3) run the arms in alternating
order (A B C, C B A, ...). Each arm is reported as median (min..max) over the rounds; group 1 also gives
the ratio plain / ours (ratio of medians, range of the per-round ratios). The machine and the load
average before and after are printed (and written to ``--json`` with the arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from encode_throughput import file_inputs, load_encoder, make_inputs, plain_loop  # noqa: E402
from timing import compare, load, machine, rate, ratio, repeats_arg, span  # noqa: E402

from unite_search.batching import bounded_map, plan_batches  # noqa: E402

CHUNK = 64  # items per prepare_many call


def show(title: str, res: dict, n_items: int | dict[str, int]) -> dict:
    """Print one group's table (items/s from ``n_items``, or a count per arm); return its rows (JSON-ready)."""
    print(f"--- {title}")
    print(f"{'arm':<44}{'ms':>26}{'items/s':>26}{'first call ms':>15}")
    rows = {}
    for arm in (k for k in res if k not in ("order", "repeats", "warmup")):
        r = res[arm]
        per_s = rate(r, n_items[arm] if isinstance(n_items, dict) else n_items)
        print(f"{arm:<44}{span(r, 1e3):>26}{span(per_s):>26}{r['warmup_times'][0] * 1e3:>15.1f}", flush=True)
        rows[arm] = {"ms": {k: r[k] * 1e3 for k in ("median", "min", "max")}, "items_s": per_s, "timing": r}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder, alias or hub id (default: a tiny random model)")
    ap.add_argument("--random", choices=["2b"], help="random weights with these shapes (no download)")
    ap.add_argument("--kind", choices=["text", "image", "video"], default="text")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--plain-batch", type=int, default=256)
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeats", type=repeats_arg, default=5, help="timed rounds per group, alternating (>= 3)")
    ap.add_argument("--from-files", action="store_true", help="read the inputs from files written for the run")
    ap.add_argument("--text-tokens", type=int, default=32, help="tokens of text per text item with --from-files")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    load_before = load()
    enc = load_encoder(args)
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    work = Path(tempfile.mkdtemp(prefix="unite-breakdown-")) if args.from_files else None
    if work is not None:
        inputs, video_enc = file_inputs(enc, work / "inputs", {args.kind: args.n}, args.text_tokens)
        enc = video_enc if args.kind == "video" else enc
    else:
        inputs = make_inputs(args.n)
    items = inputs[args.kind]
    info = machine()
    print(
        f"model {enc.model_id}  device {enc.device} ({info.get('gpu') or info['cpu']}, {info['cpu_count']} cores)  "
        f"torch {torch.__version__}  threads {torch.get_num_threads()}  kind={args.kind}  n={len(items)}  "
        f"repeats={args.repeats}  load {load_before}  inputs {'files' if args.from_files else 'in memory'}"
    )
    print("times: median (min..max) over alternating rounds, after one untimed call of each arm ('first call')")
    out: dict = {}

    # 1. encode() next to the plain loop
    plain_name = f"plain loop, batch {args.plain_batch}"
    res = compare(
        {
            "encode()": lambda: enc.encode(items),
            plain_name: lambda: plain_loop(enc, args.kind, items, args.plain_batch),
        },
        repeats=args.repeats,
        sync=sync,
    )
    r = ratio(res, "encode()", plain_name)
    out["encode"] = {"arms": show("encode() and the plain loop", res, len(items)), "ratio_plain_over_ours": r}
    print(f"ratio plain / ours: {span(r, fmt='.2f')}")

    # 2. preparation alone
    got: dict[str, list] = {}

    def serial():
        got["serial"] = [enc.prepare(it) for it in items]

    def many():
        got["many"] = [p for s in range(0, len(items), CHUNK) for p in enc.prepare_many(items[s : s + CHUNK], start=s)]

    def threaded():
        got["threads"] = list(bounded_map(enc.prepare, items, enc.workers, 32))

    prep_arms = {
        "prepare, serial": serial,
        f"prepare_many, chunks of {CHUNK}": many,
        f"prepare, {enc.workers} threads (bounded_map)": threaded,
    }
    if work is not None and args.kind != "text":  # files: also through decoding processes (speed switch)
        procs = enc.with_settings(speed=dataclasses.replace(enc.speed, processes=True))

        def serial_procs():
            got["serial_procs"] = [procs.prepare(it) for it in items]

        def threaded_procs():
            got["threads_procs"] = list(bounded_map(procs.prepare, items, enc.workers, 32))

        prep_arms["prepare, serial, in a decoding process"] = serial_procs
        prep_arms[f"prepare, {enc.workers} threads, decoding in processes"] = threaded_procs
    res = compare(prep_arms, repeats=args.repeats)
    out["prepare"] = {"arms": show("preparation", res, len(items))}
    scale = ratio(res, f"prepare, {enc.workers} threads (bounded_map)", "prepare, serial")
    out["prepare"]["threads_over_serial"] = scale
    print(f"{enc.workers} threads over serial: {span(scale, fmt='.2f')}x")
    same = all(
        np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.input_ids, c.input_ids)
        for a, b, c in zip(got["serial"], got["many"], got["threads"], strict=True)
    )
    print(f"prepare_many and the thread pool give the serial input ids: {same}")
    out["prepare"]["same_input_ids"] = same
    if "serial_procs" in got:
        visual = args.kind
        same_pixels = all(
            np.array_equal(getattr(a, visual).pixel_values, getattr(b, visual).pixel_values)
            and np.array_equal(getattr(a, visual).pixel_values, getattr(c, visual).pixel_values)
            for a, b, c in zip(got["serial"], got["serial_procs"], got["threads_procs"], strict=True)
        )
        print(f"decoding processes give the serial pixels, bit for bit: {same_pixels}")
        out["prepare"]["same_pixels_in_processes"] = same_pixels
        cost = ratio(res, "prepare, serial", "prepare, serial, in a decoding process")
        out["prepare"]["process_over_thread_serial"] = cost
        print(f"serial, a decoding process over the calling thread: {span(cost, fmt='.2f')}x the time")

    # 3. encode_prepared and single forward batches
    prepared = got["serial"]
    groups = plan_batches([p.length for p in prepared], enc.token_budget)
    print(f"batches {[len(g) for g in groups]}, lengths {sorted({p.length for p in prepared})[:8]}")
    name = f"encode_prepared (budget {enc.token_budget})"
    arms, counts = {name: lambda: enc.encode_prepared(prepared)}, {name: len(items)}
    for j, g in enumerate(groups[:2]):
        name = f"one forward, batch {j} ({len(g)} items)"
        arms[name], counts[name] = (lambda g=g: enc.forward([prepared[i] for i in g])), len(g)
    res = compare(arms, repeats=args.repeats, sync=sync)
    out["model"] = {"arms": show("encode_prepared and single forward batches", res, counts)}

    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    load_after = load()
    print(f"load before {load_before}  after {load_after}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": enc.model_id,
                    "device": str(enc.device),
                    "machine": info,
                    "load_before": load_before,
                    "load_after": load_after,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "groups": out,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
