"""Run a benchmark end to end: load, embed (through the cache), score, report with reference numbers."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from . import metrics
from .cache import EmbeddingCache, default_dir
from .loaders import LOADERS, Composed, DatasetError, Reranking, Retrieval

# Numbers from the papers and peers (shared/docs/benchmarks.md), shown beside ours; R@1 unless said.
REFERENCES: dict[str, dict[str, dict[str, float]]] = {
    "urban1k": {"Long-CLIP-L": {"I2T R@1": 82.5, "T2I R@1": 86.1}, "CLIP-L": {"I2T R@1": 68.3, "T2I R@1": 55.6},
                "LLM2CLIP": {"I2T R@1": 89.5, "T2I R@1": 94.2}},
    "carebench/general": {"Unite-Base-2B, 32 frames (paper)": {"T2V R@1": 78.1, "T2V R@5": 95.5, "T2V R@10": 97.8,
                                                               "V2T R@1": 80.8, "V2T R@5": 96.4, "V2T R@10": 98.7},
                          "Unite-2B, 8 frames (third party)": {"T2V R@1": 69.9},
                          "Unite-7B, 8 frames (third party)": {"T2V R@1": 79.8},
                          "GME-7B, 8 frames (third party)": {"T2V R@1": 74.0}},
    "carebench/spatial": {"Unite-2B, 8 frames (third party)": {"T2V R@1": 72.3},
                          "Unite-7B, 8 frames (third party)": {"T2V R@1": 80.4},
                          "GME-7B, 8 frames (third party)": {"T2V R@1": 76.7}},
    "carebench/temporal": {"Unite-2B, 8 frames (third party)": {"T2V R@1": 40.9},
                           "Unite-7B, 8 frames (third party)": {"T2V R@1": 47.2},
                           "GME-7B, 8 frames (third party)": {"T2V R@1": 44.2}},
    "sharegpt4v": {"Long-CLIP-L": {"I2T R@1": 97.2, "T2I R@1": 97.3}, "CLIP-L": {"I2T R@1": 84.2, "T2I R@1": 83.6}},
    "docci": {"Long-CLIP-L": {"I2T R@1": 66.5, "T2I R@1": 78.6}, "CLIP-L": {"I2T R@1": 63.1, "T2I R@1": 65.8}},
    "webvid-covr": {"Unite-2B (paper)": {"R@1": 69.1}, "Unite-7B (paper)": {"R@1": 72.5}, "CoVR-2": {"R@1": 59.8}},
    "msrvtt": {"Unite-2B, 8 frames (third party)": {"T2V R@1": 36.7},
               "Unite-7B, 8 frames (third party)": {"T2V R@1": 43.9}},
    "mmeb": {"Unite-7B (paper)": {"Overall": 70.3, "Classification": 68.3, "VQA": 65.1, "Retrieval": 71.6,
                                  "Grounding": 84.8},
             "VLM2Vec-7B": {"Overall": 65.8}, "GME-2B": {"Overall": 55.8}},
}  # fmt: skip


def _directions(retrieval: Retrieval) -> tuple[str, str]:
    kind = "V" if retrieval.items and "video" in retrieval.items[0] else "I"
    return f"T2{kind}", f"{kind}2T"


def run_benchmark(
    name: str,
    data: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    encoder=None,
    variant: str = "general",
    frames: int | None = None,
    limit: int | None = None,
    subsets: list[str] | None = None,
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: Any = "auto",
    progress: bool = False,
    allow_outside: bool = False,
) -> dict[str, Any]:
    """Score ``name`` on the dataset in ``data``; returns the JSON-ready result (see :func:`format_result`).

    Media the dataset's files name are read only inside ``data`` (symlinks followed) unless
    ``allow_outside``; a damaged dataset file is a :class:`~unite_search.DatasetError`; a vector that
    is not finite is an :class:`~unite_search.EncodeError` (never scored, never cached)."""
    if name not in LOADERS:
        raise DatasetError(f"unknown benchmark {name!r}; choose from {', '.join(sorted(LOADERS))}")
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"limit": limit, "allow_outside": allow_outside}
    if name == "carebench":
        kwargs["variant"] = variant
    if name == "mmeb":
        kwargs["subsets"] = subsets
    dataset = LOADERS[name](data, **kwargs)

    if encoder is None:
        from ..encoder import Encoder

        encoder = Encoder.load(model, device=device, dtype=dtype)
    if dataset.frames is not None or frames is not None:
        settings = dataclasses.replace(encoder.preprocessing, frames=frames or dataset.frames, sampler=dataset.sampler)
        encoder = encoder.with_settings(settings)
    # bf16 and float32 vectors differ by ~1e-2: never one's cached for the other
    cache = EmbeddingCache(cache_dir or default_dir(), {**encoder.settings, **encoder.numerics})

    def encode(items):
        return encoder.encode(items, batch_size=batch_size, progress=progress)

    result: dict[str, Any] = {
        "benchmark": name,
        "variant": variant if name == "carebench" else None,
        "model": encoder.model_id,
        "revision": encoder.revision,
        "settings": encoder.settings,
        "numerics": encoder.numerics,
        "data": str(Path(data).expanduser().resolve()),
        "notes": list(dataset.notes),
    }
    if isinstance(dataset, Retrieval):
        if not dataset.items:
            raise DatasetError(f"{name}: no item with its media file found under {data}")
        texts = cache.embed([{"text": t} for t in dataset.texts], encode)
        items = cache.embed(dataset.items, encode)
        t2x, x2t = _directions(dataset)
        scored = metrics.two_way(texts, items, dataset.text_item)
        result["metrics"] = {t2x: scored["t2x"], x2t: scored["x2t"]}
        result["counts"] = {"texts": len(dataset.texts), "items": len(dataset.items), "skipped_missing_media":
                            len(dataset.missing)}  # fmt: skip
    elif isinstance(dataset, Composed):
        if not dataset.queries:
            raise DatasetError(f"{name}: no row with both of its videos found under {data}")
        queries = cache.embed(dataset.queries, encode)
        gallery = cache.embed(dataset.gallery, encode)
        result["metrics"] = {
            "V+T2V": metrics.covr(metrics.similarities(queries, gallery), dataset.reference_ids, dataset.target_ids)
        }
        result["counts"] = {"queries": len(dataset.queries), "skipped_missing_media": len(dataset.missing)}
    else:
        result.update(_run_mmeb(dataset, cache, encode))
    result["missing"] = dataset.missing if not isinstance(dataset, Reranking) else None
    key = f"{name}/{variant}" if name == "carebench" else name
    result["reference"] = REFERENCES.get(key, {})
    result["encoded_items"] = cache.encoded
    result["time_s"] = round(time.perf_counter() - t0, 2)
    return result


def _run_mmeb(dataset: Reranking, cache: EmbeddingCache, encode) -> dict[str, Any]:
    per_dataset: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    for subset, rows in dataset.datasets.items():
        counts[subset] = {"rows": len(rows), "skipped_missing_media": dataset.missing.get(subset, 0)}
        if not rows:
            continue
        flat = [q for q, _ in rows] + [c for _, cands in rows for c in cands]
        vecs = cache.embed(flat, encode)
        queries, offset = vecs[: len(rows)], len(rows)
        correct = 0
        for i, (_, cands) in enumerate(rows):
            correct += metrics.mmeb_correct(queries[i], vecs[offset : offset + len(cands)])
            offset += len(cands)
        per_dataset[subset] = 100.0 * correct / len(rows)
    scored = {"per_dataset": per_dataset, "summary": metrics.mmeb_summary(per_dataset),
              "summary_datasets": metrics.mmeb_coverage(per_dataset)}  # fmt: skip
    return {"metrics": scored, "counts": counts}


def _partial(scored: int, of: int) -> str:
    return "" if scored == of else f" ({scored} of {of} datasets)"


def format_result(result: dict[str, Any]) -> str:
    """A readable table: our numbers, the counts, and the reference numbers beside them."""
    title = result["benchmark"] + (f" ({result['variant']})" if result.get("variant") else "")
    lines = [f"{title}: model {result['model']} (revision {result['revision']})", f"data  {result['data']}"]
    counts = result["counts"]
    if result["benchmark"] == "mmeb":
        skipped = sum(c["skipped_missing_media"] for c in counts.values())
        scored = sum(c["rows"] for c in counts.values())
        lines.append(f"scored {scored} rows in {len(counts)} datasets; skipped {skipped} with missing media")
        per_dataset = result["metrics"]["per_dataset"]
        for subset in sorted(counts):
            told = f"{per_dataset[subset]:6.1f}" if subset in per_dataset else "  none: no row with its media"
            lines.append(f"  {subset:<22}{told}")
        summary, covers = result["metrics"]["summary"], result["metrics"]["summary_datasets"]
        means = [f"{k} {v:.1f}{_partial(*covers[k])}" for k, v in summary.items() if v is not None]
        lines.append("  " + "  ".join(means))
    else:
        scored = counts.get("texts", counts.get("queries"))
        lines.append(f"scored {scored} queries; skipped {counts['skipped_missing_media']} with missing media")
        for direction, values in result["metrics"].items():
            lines.append(f"  {direction:<6}" + "  ".join(f"{k} {v:6.2f}" for k, v in values.items()))
    for who, numbers in result["reference"].items():
        lines.append(f"  ref   {who}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))
    lines += [f"note  {n}" for n in result["notes"]]
    lines.append(f"encoded {result['encoded_items']} new items (cached vectors reused), {result['time_s']}s")
    return "\n".join(lines)
