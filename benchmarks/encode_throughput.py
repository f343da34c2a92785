"""Encoder throughput: unite-search's Encoder next to a plain-transformers loop, same inputs, same run.

    python benchmarks/encode_throughput.py                 # tiny random model (CPU smoke figures)
    python benchmarks/encode_throughput.py --random 2b     # random weights with Qwen2-VL-2B shapes
    python benchmarks/encode_throughput.py --model DIR     # a real checkpoint

Issue 17's run (one GPU, every lever beside the plain loop, inputs read from files, a profile per kind):

    python benchmarks/encode_throughput.py --random 2b --from-files \
        --speeds none,vision_runs,default,default+overlap,default+compile,all,all@65536 \
        --profile results/profiles --json results/encode.json

``--speeds`` lists our arms by their speed switches (``unite_search.speed``; ``default`` is what users get,
``all`` every switch on, ``none`` every switch off; ``default+overlap`` adds a switch to the default),
each optionally with a token budget of its own (``all@65536``); each is timed beside the plain loop
in the same rounds; an arm that raises (a compile error, memory) is named and dropped, the others go on,
and ``--json`` is rewritten after every kind. ``--from-files`` writes
448x448 JPEGs, 8-frame MP4s (PyAV) and texts of ``--text-tokens`` tokens to a temporary folder and
encodes the paths (videos at a fixed 8 frames).

With ``--random 2b`` the test tokenizer takes the prompt's words and the texts' words as single tokens, so
a prompt is 28 tokens plus its text, as with Qwen2's tokenizer (runs before 2026-11-29 used bytes alone:
~95 tokens of prompt, ~5 a word).

Inputs otherwise (in memory): text (about 32 words; the TEXT below, numbered),
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
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import compare, load, machine, rate, ratio, repeats_arg, scratch, span  # noqa: E402

from unite_search.encoder import Encoder  # noqa: E402
from unite_search.prompts import render  # noqa: E402
from unite_search.settings import EncoderSettings  # noqa: E402
from unite_search.testing import (  # noqa: E402
    QWEN2VL_2B_MROPE,
    QWEN2VL_2B_TEXT,
    QWEN2VL_2B_VISION,
    TOKEN_ID,
    build_model,
    prompt_words,
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

        tok_dir = scratch("unite-bench-tok-") / "tok"
        tok_dir.mkdir()
        # the prompt's words and the texts' words as single tokens: a prompt takes 28 tokens plus its
        # text, as with Qwen2's tokenizer (with bytes alone it would take ~95 plus ~5 a word)
        text_words = TEXT.split()
        write_tokenizer(tok_dir, prompt_words() + text_words + [" " + w for w in text_words])
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
    model = args.model or str(tiny_model(scratch("unite-bench-model-") / "tiny"))
    return Encoder.load(model, token_budget=args.token_budget, workers=args.workers)


def open_rgb(image):
    """A path read as a hand-rolled script reads it (PIL, RGB); an in-memory image as it is."""
    from PIL import Image

    if isinstance(image, Path):
        with Image.open(image) as img:
            return img.convert("RGB")
    return image


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
            px = proc(images=[open_rgb(it["image"]) for it in chunk], return_tensors="pt")
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


def write_files(root: Path, counts: dict[str, int], text_tokens: int, tokenizer, seed: int = 0):
    """Issue 17's inputs as files on disk: 448x448 JPEG photos, 8-frame 336x336 H.264 MP4 clips (PyAV),
    and texts of whole words, ``text_tokens`` tokens or a word more (the encoder's tokenizer)."""
    import av
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:448, 0:448]
    images, videos = [], []
    for i in range(counts.get("image", 0)):  # photo-like: smooth gradients plus noise, so JPEG sizes are realistic
        a, b = rng.uniform(0.3, 1.5, 2)
        base = np.stack([(xx * a + i) % 256, (yy * b) % 256, (xx + yy + 7 * i) % 256], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = root / f"photo{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        images.append({"image": path})
    for i in range(counts.get("video", 0)):
        path = root / f"clip{i:05d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width, stream.height, stream.pix_fmt = 336, 336, "yuv420p"
            for f in range(8):
                frame = np.clip(
                    np.stack(
                        [
                            (xx[:336, :336] + 9 * f + i) % 256,
                            (yy[:336, :336] * 1.3) % 256,
                            np.full((336, 336), (31 * f) % 256),
                        ],
                        -1,
                    )
                    + rng.normal(0, 8, (336, 336, 3)),
                    0,
                    255,
                ).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        videos.append({"video": path})
    words = TEXT.split()
    texts = []
    for i in range(counts.get("text", 0)):  # whole words from a rotating start, until text_tokens or more
        text, k = "", 0
        while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < text_tokens:
            text = f"{text} {words[(i + k) % len(words)]}".strip()
            k += 1
        texts.append({"text": text})
    return {"text": texts, "image": images, "video": videos}


def file_inputs(encoder: Encoder, root: Path, counts: dict[str, int], text_tokens: int):
    """``write_files`` for ``encoder``'s tokenizer, and the encoder to read the clips with (a fixed 8 frames)."""
    inputs = write_files(root, counts, text_tokens, encoder._tokenizer)
    return inputs, encoder.with_settings(dataclasses.replace(encoder.preprocessing, frames=8))


def arm_speed(switches: str):
    """``none``, ``default``, ``all``, one switch, or several joined by ``+`` (``default+overlap``)."""
    from unite_search.speed import Speed

    on: set[str] = set()
    for name in switches.split("+"):
        if name in ("default", "all"):
            base = Speed() if name == "default" else Speed(**{f.name: True for f in dataclasses.fields(Speed)})
            on |= {k for k, v in base.to_dict().items() if v}
        elif name != "none":
            on.add(name)
    return Speed.parse(",".join(sorted(on)) or "none")


def arm_name(spec: str) -> str:
    return "ours" if spec == "default" else f"ours[{spec}]"


def profile_kind(encoder: Encoder, items, path: Path, sync) -> None:
    """One ``encode`` under ``torch.profiler``: the top operators and kernels, by device time on a GPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = encoder.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    encoder.encode(items)  # warm
    sync()
    with profile(activities=activities) as prof:
        encoder.encode(items)
        sync()
    key = "cuda_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    path.write_text(f"{len(items)} items, speed {encoder.speed.to_dict()}, torch {torch.__version__}\n{table}\n")
    print(f"profile written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder, alias or hub id (default: a tiny random model)")
    ap.add_argument("--random", choices=["2b"], help="random weights with these shapes (no download)")
    ap.add_argument("--n", default=None, help="items per kind: N, or text=N,image=N,video=N (default 64 tiny, 512 GPU)")
    ap.add_argument("--kinds", default="text,image,video")
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--plain-batch", default="text=256,image=32,video=8", help="fixed batch sizes of the plain loop")
    ap.add_argument("--repeats", type=repeats_arg, default=5, help="timed rounds per kind, alternating (>= 3)")
    ap.add_argument(
        "--from-files",
        action="store_true",
        help="issue 17's inputs: JPEG and MP4 files on disk, texts of --text-tokens tokens",
    )
    ap.add_argument("--text-tokens", type=int, default=32, help="tokens of text per text item with --from-files")
    ap.add_argument(
        "--speeds",
        default="default",
        help="our arms, by speed switches (unite_search.speed): e.g. none,vision_runs,default,all",
    )
    ap.add_argument("--no-plain", action="store_true", help="leave the plain loop out (ratios against the first arm)")
    ap.add_argument("--profile", type=Path, help="also write a torch.profiler table per kind into this folder")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    load_before = load()
    encoder = load_encoder(args)
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    kinds = args.kinds.split(",")
    default_n = 512 if encoder.device.type == "cuda" else 64
    if args.n is None or "=" not in args.n:
        counts = dict.fromkeys(kinds, int(args.n or default_n))
    else:
        given = {k: int(v) for k, v in (p.split("=") for p in args.n.split(","))}
        counts = {**dict.fromkeys(kinds, default_n), **given}
    n = max(counts.values())
    plain_batch = {k: int(v) for k, v in (p.split("=") for p in args.plain_batch.split(","))}
    speeds, budgets = {}, {}
    for spec in args.speeds.split(","):  # switches, then optionally @ a token budget of its own
        switches, _, budget = spec.partition("@")
        speeds[arm_name(spec)] = arm_speed(switches)
        budgets[arm_name(spec)] = int(budget) if budget else None
    work = scratch("unite-encode-")
    if args.from_files:
        inputs, video_encoder = file_inputs(encoder, work / "inputs", counts, args.text_tokens)
    else:
        inputs, video_encoder = make_inputs(n), encoder
    info = machine()
    rows = []
    first = next(iter(speeds))
    base = "plain" if not args.no_plain else first
    print(
        f"model {encoder.model_id}  device {encoder.device} ({info.get('gpu') or info['cpu']}, "
        f"{info['cpu_count']} cores)  dtype {encoder._model.dtype}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}  n={counts}  repeats={args.repeats}  load {load_before}  "
        f"inputs {'files' if args.from_files else 'in memory'}"
    )
    print(f"items/s: median (min..max) over alternating rounds; x {base}: {base} time / arm time per round")

    def write_json(load_after=None):
        if not args.json:
            return
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
                    "speeds": {name: speed.to_dict() for name, speed in speeds.items()},
                    "token_budgets": {name: budgets[name] or encoder.token_budget for name in speeds},
                    "n": counts,
                    "rows": rows,
                },
                indent=2,
            )
        )

    for kind in kinds:
        items = inputs[kind][: counts[kind]]
        out: dict[str, np.ndarray] = {}
        kind_encoder = video_encoder if kind == "video" else encoder
        arms = {}
        for name, speed in speeds.items():
            arm_encoder = kind_encoder.with_settings(speed=speed)
            arms[name] = lambda e=arm_encoder, name=name, items=items, out=out: out.__setitem__(
                name, e.encode(items, token_budget=budgets[name])
            )
        if not args.no_plain:

            def plain(items=items, kind=kind, out=out, enc=kind_encoder):
                out["plain"] = plain_loop(enc, kind, items, plain_batch[kind])

            arms["plain"] = plain
        # warm-up (one untimed call of each arm) on the timed items themselves: every loop meets every
        # batch shape it will be timed on (and a compiled arm compiles there)
        res = compare(arms, repeats=args.repeats, warmup=1, sync=sync, keep_going=True)
        failed = res["failed"]
        ref = None if first in failed else out[first]
        row = {"input": kind, "n": len(items), "arms": {}}
        for name in arms:
            if name in failed:
                row["arms"][name] = {"error": failed[name]}
                continue
            same_input = ref is not None and (name != "plain" or kind == "text")
            row["arms"][name] = {
                "items_s": rate(res[name], len(items)),
                f"x_{base}": ratio(res, name, base) if name != base and base not in failed else None,
                f"max_abs_diff_vs_{first}": float(np.abs(out[name] - ref).max()) if same_input else None,
            }
        row["timing"] = res
        rows.append(row)
        for name in arms:
            a = row["arms"][name]
            if "error" in a:
                print(f"{kind:<6}{name:<34}  failed: {a['error'][:200]}", flush=True)
                continue
            x, diff = a[f"x_{base}"], a[f"max_abs_diff_vs_{first}"]  # diff None: other inputs (plain decodes its own)
            print(
                f"{kind:<6}{name:<34}{span(a['items_s']):>26}{(span(x, fmt='.2f') if x else '-'):>22}"
                f"{format(diff, '>12.2e') if diff is not None else '-':>12}",
                flush=True,
            )
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            try:  # a profile is a reading aid: its failure must not cost the next kind's figures
                profile_kind(kind_encoder, items[:64], args.profile / f"profile-{kind}.txt", sync)
            except Exception as exc:  # noqa: BLE001  named, then on to the next kind
                print(f"profile of {kind} failed: {type(exc).__name__}: {exc}", flush=True)
        write_json()  # after every kind: a run cut short keeps the kinds it finished
    shutil.rmtree(work, ignore_errors=True)
    load_after = load()
    print(f"load before {load_before}  after {load_after}")
    write_json(load_after)


if __name__ == "__main__":
    main()
