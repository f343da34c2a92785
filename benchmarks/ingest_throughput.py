"""Ingest throughput: decode-only, encode-only and end-to-end on one generated corpus, in one run.

    python benchmarks/ingest_throughput.py                  # tiny random model (CPU smoke figures)
    python benchmarks/ingest_throughput.py --random 2b      # random weights with Qwen2-VL-2B shapes
    python benchmarks/ingest_throughput.py --model DIR      # a real checkpoint

The corpus: JPEG photos (480-800 px wide), H.264 clips (4 s, 24 fps, 320x240) and text files of
600-1,500 characters, written to a temporary folder. Three measurements over the same rows:

- decode: every row's read, decode and preprocessing on ``--workers`` threads (what the encoder is fed);
- encode: the same pre-decoded inputs through the encoder alone (token-budget batches);
- ingest: ``unite_search.ingest`` into a fresh index: decode, encode and write overlapped. "pipeline"
  is that stage's wall time; "total" adds discovery, hashing and the FAISS build.

The target is ingest >= 85% of the slower of decode and encode: the stages overlap. On a machine
where decoding and encoding share the same few CPU cores they cannot both run at full speed at
once, so the ratio there says little; a GPU machine is where it means something.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from encode_throughput import load_encoder  # noqa: E402

from unite_search.batching import bounded_map  # noqa: E402
from unite_search.corpus import walk  # noqa: E402
from unite_search.ingestion import ingest  # noqa: E402
from unite_search.units import IngestOptions, find_captions, plan_units, prepare_task, read_files  # noqa: E402

WORDS = [
    "river",
    "stone",
    "lantern",
    "harbour",
    "meadow",
    "violin",
    "copper",
    "orchard",
    "glacier",
    "market",
    "signal",
    "window",
]


def make_corpus(root: Path, images: int, videos: int, texts: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)

    def photo(i: int) -> None:
        w = int(rng.integers(480, 801))
        h = w * 3 // 4
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (1 + i % 3)) % 256, (yy * (2 + i % 5)) % 256, (xx + yy + 7 * i) % 256], -1)
        noise = np.random.default_rng(i).integers(-20, 20, base.shape)
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"photos/{i // 100:03d}/p{i:05d}.jpg", quality=90)

    def clip(i: int) -> None:
        import av

        with av.open(str(root / f"clips/{i // 100:03d}/c{i:05d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            for f in range(96):
                frame = np.zeros((240, 320, 3), np.uint8)
                frame[..., i % 3] = (f * 5 + i * 13) % 256
                frame[:, (f * 3) % 320 :, (i + 1) % 3] = 180
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    def text(i: int) -> None:
        n = int(np.random.default_rng(i).integers(100, 250))
        words = np.random.default_rng(i).choice(WORDS, n)
        (root / f"texts/{i // 100:03d}/t{i:05d}.txt").write_text(" ".join(words) + ".\n")

    for kind, count in (("photos", images), ("clips", videos), ("texts", texts)):
        for d in range(0, count, 100):
            (root / kind / f"{d // 100:03d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(photo, range(images)))
        list(pool.map(clip, range(videos)))
        list(pool.map(text, range(texts)))


def plan_tasks(root: Path, encoder, options: IngestOptions, workers: int):
    found = walk(root)
    facts, problems = read_files(found.entries, {}, options, workers, progress=False)
    if problems:
        raise SystemExit(f"generated corpus has unreadable files: {problems[:3]}")
    captions, sidecars, _ = find_captions(found.entries, facts)
    units = plan_units(facts, captions, sidecars, [], options, encoder.preprocessing)
    return [task for unit in units for task in unit.tasks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder, alias or hub id (default: a tiny random model)")
    ap.add_argument("--random", choices=["2b"], help="random weights with these shapes (no download)")
    ap.add_argument("--images", type=int, default=None, help="photos (default 96 CPU, 1024 GPU)")
    ap.add_argument("--videos", type=int, default=None, help="clips (default 24 CPU, 192 GPU)")
    ap.add_argument("--texts", type=int, default=None, help="text files (default 96 CPU, 1024 GPU)")
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: cores, at most 8)")
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument(
        "--memory-bytes", type=int, default=None, help="ingest's budget for decoded inputs not yet encoded (2 GiB)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    encoder = load_encoder(args)
    gpu = encoder.device.type == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    workers = args.workers or encoder.workers
    sizes = {
        "images": args.images if args.images is not None else (1024 if gpu else 96),
        "videos": args.videos if args.videos is not None else (192 if gpu else 24),
        "texts": args.texts if args.texts is not None else (1024 if gpu else 96),
    }
    device_name = torch.cuda.get_device_name() if gpu else platform.processor() or "cpu"
    print(
        f"model {encoder.model_id}  device {encoder.device} ({device_name})  dtype {encoder._model.dtype}  "
        f"torch {torch.__version__}  cpu cores {os.cpu_count()}  workers {workers}  corpus {sizes}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="unite-ingest-bench-"))
    try:
        root = tmp / "corpus"
        t = time.perf_counter()
        make_corpus(root, **sizes)
        print(f"corpus written in {time.perf_counter() - t:.1f}s", flush=True)
        options = IngestOptions()
        tasks = plan_tasks(root, encoder, options, workers)
        rows = len(tasks)

        warm = [prepare_task(encoder, task)[1] for task in tasks[:: max(1, rows // 16)]]
        encoder.encode_prepared(warm)  # kernels, allocator and caches warm before any timing
        sync()

        t = time.perf_counter()
        prepared = [p for _, p in bounded_map(lambda task: prepare_task(encoder, task), tasks, workers, 4 * workers)]
        decode_s = time.perf_counter() - t
        print(f"decode  {rows / decode_s:9.1f} rows/s  ({decode_s:.1f}s)", flush=True)

        sync()
        t = time.perf_counter()
        encoder.encode_prepared(prepared)
        sync()
        encode_s = time.perf_counter() - t
        print(f"encode  {rows / encode_s:9.1f} rows/s  ({encode_s:.1f}s)", flush=True)
        del prepared

        memory = {"memory_bytes": args.memory_bytes} if args.memory_bytes else {}
        report = ingest(root, tmp / "index", encoder=encoder, workers=workers, gpu=False, **memory)
        pipeline_s, total_s = report.timings["pipeline"], report.timings["total"]
        if report.failures or report.encoded_rows != rows:
            raise SystemExit(f"ingest did not index the corpus cleanly:\n{report.summary()}")
        slower = min(rows / decode_s, rows / encode_s)
        result = {
            "model": encoder.model_id,
            "device": str(encoder.device),
            "device_name": device_name,
            "dtype": str(encoder._model.dtype),
            "torch": torch.__version__,
            "cpu_cores": os.cpu_count(),
            "workers": workers,
            "corpus": sizes,
            "rows": rows,
            "decode_rows_s": rows / decode_s,
            "encode_rows_s": rows / encode_s,
            "ingest_pipeline_rows_s": rows / pipeline_s,
            "ingest_total_rows_s": rows / total_s,
            "pipeline_over_slower_stage": (rows / pipeline_s) / slower,
            "total_over_slower_stage": (rows / total_s) / slower,
            "ingest_timings": report.timings,
            "ingest_memory_peak_bytes": report.memory_peak,
        }
        print(f"ingest  {rows / pipeline_s:9.1f} rows/s  pipeline ({pipeline_s:.1f}s)", flush=True)
        print(f"ingest  {rows / total_s:9.1f} rows/s  total, read+index included ({total_s:.1f}s)")
        print(f"pipeline / slower stage = {result['pipeline_over_slower_stage']:.2f} (target >= 0.85)")
        print(f"total / slower stage    = {result['total_over_slower_stage']:.2f}")
        print(f"stage timings: {report.timings}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
