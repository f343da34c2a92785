"""Encoder throughput: unite-search's Encoder next to a plain-transformers loop, same inputs, same run.

    python benchmarks/encode_throughput.py                 # tiny random model (CPU smoke figures)
    python benchmarks/encode_throughput.py --random 2b     # random weights with Qwen2-VL-2B shapes
    python benchmarks/encode_throughput.py --model DIR     # a real checkpoint

Inputs: text (about 32 words; ~230 tokens with the byte-level test tokenizer of `--random 2b`),
image 448x448 (256 visual tokens), video 8 frames 336x336 (UNITE's
processor raises each frame to >= 200,704 px, so 4 x 256 = 1024 visual tokens). The plain loop is what
a hand-rolled script does: fixed batch size, left padding, Qwen2VLImageProcessorPil for images, the
model's own forward (3-D M-RoPE positions) and the last position. Video frames for the plain loop come
from our own preprocessing (transformers' video processor needs torchvision).

Timing (benchmarks/timing.py ``compare``): per input kind, both arms first run once untimed on the very
items they are timed on (so both have met their batch shapes: kernel choice and allocator growth happen
on first sight of a shape), then ``--repeats`` rounds (default 5, at least 3) alternate the order, ours
then plain, plain then ours, ... Each arm's items/s is reported as median (min..max) over the rounds, and
the ratio (plain time / ours time, > 1: ours is faster) as the ratio of the medians with the range of
the per-round ratios, each pair timed back to back. The machine (CPU, cores, torch and its threads, GPU)
and the load average before and after are printed and written to ``--json`` with the arguments. A wide
ratio range means a busy machine: rerun before quoting it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import compare, load, machine, rate, ratio, repeats_arg, span  # noqa: E402

from unite_search.encoder import Encoder  # noqa: E402
from unite_search.prompts import render  # noqa: E402
from unite_search.settings import EncoderSettings  # noqa: E402
from unite_search.testing import (  # noqa: E402
    QWEN2VL_2B_MROPE,
    QWEN2VL_2B_TEXT,
    QWEN2VL_2B_VISION,
    TOKEN_ID,
    build_model,
    tiny_model,
    write_tokenizer,
)
from unite_search.video import preprocess_video  # noqa: E402

TEXT = "A man in a red jacket walks his dog along a snowy mountain path while the sun sets behind the peaks"


def make_inputs(n: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    texts = [{"text": f"{TEXT} ({i})"} for i in range(n)]
    images = [{"image": Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8))} for _ in range(n)]
    videos = [{"video": list(rng.integers(0, 256, (8, 336, 336, 3), dtype=np.uint8))} for _ in range(n)]
    return {"text": texts, "image": images, "video": videos}


def load_encoder(args):
    if args.random == "2b":
        import torch

        tok_dir = Path(tempfile.mkdtemp()) / "tok"
        tok_dir.mkdir()
        write_tokenizer(tok_dir)
        from transformers import AutoTokenizer

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        with torch.device(device):  # initialise on the GPU: ten times faster than on the host
            full = build_model(QWEN2VL_2B_TEXT, QWEN2VL_2B_VISION, QWEN2VL_2B_MROPE, TOKEN_ID, seed=0)
        full.config._attn_implementation = "sdpa"
        inner = full.model.to(device=device, dtype=dtype).eval()
        return Encoder(
            inner,
            AutoTokenizer.from_pretrained(tok_dir),
            model_id="random-2b",
            revision="random",
            settings=EncoderSettings(),
            device=device,
            token_budget=args.token_budget or (32768 if device.type == "cuda" else 4096),
            workers=args.workers or 8,
        )
    model = args.model or str(tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    return Encoder.load(model, token_budget=args.token_budget, workers=args.workers)


def plain_loop(encoder: Encoder, kind: str, items, batch_size: int) -> np.ndarray:
    """A hand-rolled embedding loop on the same weights."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model, tok, dev = encoder._model, encoder._tokenizer, encoder.device
    s = encoder.preprocessing
    proc = Qwen2VLImageProcessorPil(min_pixels=s.min_pixels, max_pixels=s.max_pixels)
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        kwargs = {}
        if kind == "text":
            prompts = [render({"text"}, it["text"]) for it in chunk]
        elif kind == "image":
            px = proc(images=[it["image"] for it in chunk], return_tensors="pt")
            n = int(px["image_grid_thw"][0].prod()) // 4
            prompts = [render({"image"}).replace("<|image_pad|>", "<|image_pad|>" * n) for _ in chunk]
            kwargs = {"pixel_values": px["pixel_values"].to(dev), "image_grid_thw": px["image_grid_thw"].to(dev)}
        else:
            vis = [preprocess_video(it["video"], s) for it in chunk]
            prompts = [render({"video"}).replace("<|video_pad|>", "<|video_pad|>" * v.tokens) for v in vis]
            kwargs = {
                "pixel_values_videos": torch.from_numpy(np.concatenate([v.pixel_values for v in vis])).to(dev),
                "video_grid_thw": torch.tensor([v.grid_thw for v in vis]).to(dev),
            }
        enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"].to(dev)
        types = torch.zeros_like(ids, dtype=torch.int32)
        types[ids == model.config.image_token_id] = 1
        types[ids == model.config.video_token_id] = 2
        with torch.inference_mode():
            hidden = model(
                input_ids=ids,
                attention_mask=enc["attention_mask"].to(dev),
                mm_token_type_ids=types,
                use_cache=False,
                **kwargs,
            ).last_hidden_state
            vec = torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)
        out.append(vec.cpu().numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder, alias or hub id (default: a tiny random model)")
    ap.add_argument("--random", choices=["2b"], help="random weights with these shapes (no download)")
    ap.add_argument("--n", type=int, default=None, help="items per kind (default 64 tiny, 512 GPU)")
    ap.add_argument("--kinds", default="text,image,video")
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--plain-batch", default="text=256,image=32,video=8", help="fixed batch sizes of the plain loop")
    ap.add_argument("--repeats", type=repeats_arg, default=5, help="timed rounds per kind, alternating (>= 3)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    load_before = load()
    encoder = load_encoder(args)
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    n = args.n or (512 if encoder.device.type == "cuda" else 64)
    plain_batch = {k: int(v) for k, v in (p.split("=") for p in args.plain_batch.split(","))}
    inputs = make_inputs(n)
    info = machine()
    rows = []
    print(
        f"model {encoder.model_id}  device {encoder.device} ({info.get('gpu') or info['cpu']}, "
        f"{info['cpu_count']} cores)  dtype {encoder._model.dtype}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}  n={n}  repeats={args.repeats}  load {load_before}"
    )
    print("items/s and ratio: median (min..max) over alternating rounds; ratio = plain time / ours time")
    print(f"{'input':<7}{'ours items/s':>24}{'plain items/s':>24}{'ratio':>20}{'max |diff|':>12}")
    for kind in args.kinds.split(","):
        items = inputs[kind]
        out: dict[str, np.ndarray] = {}

        def ours(items=items, out=out):
            out["ours"] = encoder.encode(items)

        def plain(items=items, kind=kind, out=out):
            out["plain"] = plain_loop(encoder, kind, items, plain_batch[kind])

        # warm-up (one untimed call of each arm) on the timed items themselves: both loops meet every
        # batch shape they will be timed on
        res = compare({"ours": ours, "plain": plain}, repeats=args.repeats, warmup=1, sync=sync)
        diff = float(np.abs(out["ours"] - out["plain"]).max()) if kind == "text" else float("nan")
        r = ratio(res, "ours", "plain")
        row = {
            "input": kind,
            "n": n,
            "ours_items_s": rate(res["ours"], n),
            "plain_items_s": rate(res["plain"], n),
            "ratio": r,
            "text_max_abs_diff": diff,
            "timing": res,
        }
        rows.append(row)
        print(
            f"{kind:<7}{span(row['ours_items_s']):>24}{span(row['plain_items_s']):>24}{span(r, fmt='.2f'):>20}"
            f"{diff:>12.2e}",
            flush=True,
        )
    load_after = load()
    print(f"load before {load_before}  after {load_after}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": encoder.model_id,
                    "device": str(encoder.device),
                    "dtype": str(encoder._model.dtype),
                    "machine": info,
                    "load_before": load_before,
                    "load_after": load_after,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "n": n,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
