"""Benchmark loaders: each reads its dataset exactly as distributed (layouts in ``shared/docs/benchmarks.md``).

Every loader accepts the folder a user downloaded or unzipped (an extra top-level folder is fine),
ignores stray files, and counts the items whose media file is missing instead of dropping them
silently.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError

IMAGE_TOKEN = "<|image_1|>"  # MMEB's placeholder; our prompt puts the image before the text


@dataclass
class Retrieval:
    """Two-way retrieval: texts against items (images or videos); ``text_item[t]`` is text t's item."""

    texts: list[str]
    items: list[dict[str, Any]]
    text_item: list[int]
    item_ids: list[str]
    missing: list[str] = field(default_factory=list)  # item ids whose media file is absent
    notes: list[str] = field(default_factory=list)
    frames: int | None = None  # fixed frame count for videos (None: the encoder's fps mode)
    sampler: str = "linspace"

    def add(self, item_id: str, item: dict[str, Any], *texts: str) -> None:
        """One item and the text(s) describing it."""
        for text in texts:
            self.text_item.append(len(self.items))
            self.texts.append(text)
        self.items.append(item)
        self.item_ids.append(item_id)


@dataclass
class Composed:
    """WebVid-CoVR: (reference video, edit) queries against the target videos, gold on the diagonal."""

    queries: list[dict[str, Any]]
    gallery: list[dict[str, Any]]
    reference_ids: list[str]
    target_ids: list[str]
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frames: int | None = 16
    sampler: str = "linspace"


@dataclass
class Reranking:
    """MMEB: per dataset, rows of (query, candidates) with the gold at candidate 0."""

    datasets: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]]
    missing: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    frames: int | None = None
    sampler: str = "linspace"


def find_root(data: str | os.PathLike, *markers: str, depth: int = 3) -> Path:
    """The folder under ``data`` (itself or up to ``depth`` levels down) holding every marker path."""
    data = Path(data).expanduser()
    if not data.is_dir():
        raise DatasetError(f"{data}: not a folder")
    frontier = [data]
    for _ in range(depth + 1):
        for folder in frontier:
            if all((folder / m).exists() for m in markers):
                return folder
        frontier = sorted(
            p for folder in frontier for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))
        )
    raise DatasetError(f"{data}: no {' and '.join(markers)} found (looked {depth} levels down)")


def _first_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[0].strip() if lines else ""


# ----------------------------------------------------------------------------- Urban1K
def urban1k(data, *, limit: int | None = None) -> Retrieval:
    root = find_root(data, "caption", "image")
    captions = sorted((p for p in (root / "caption").glob("*.txt") if p.stem.isdigit()), key=lambda p: int(p.stem))
    out = Retrieval([], [], [], [], notes=["caption = first line of caption/<n>.txt; pairs by numeric stem"])
    for path in captions[:limit]:
        image = root / "image" / f"{path.stem}.jpg"
        if not image.is_file():
            out.missing.append(path.stem)
            continue
        out.add(path.stem, {"image": str(image)}, _first_line(path))
    return out


# ----------------------------------------------------------------------------- CaReBench
CAREBENCH_FIELDS = {"general": "caption", "spatial": "spatial_caption", "temporal": "temporal_caption"}


def carebench(data, *, variant: str = "general", limit: int | None = None) -> Retrieval:
    if variant not in CAREBENCH_FIELDS:
        raise DatasetError(f"CaReBench variant is general, spatial or temporal, not {variant!r}")
    root = find_root(data, "json/metadata.json")
    with open(root / "json" / "metadata.json", encoding="utf-8") as fh:
        meta = json.load(fh)
    key = CAREBENCH_FIELDS[variant]
    out = Retrieval([], [], [], [], frames=32, sampler="segment-middle")
    out.notes.append(f"{variant}: text from {key!r}; 32 frames, middle of 32 equal segments")
    for entry in meta[:limit]:
        video = root / "videos" / entry["video"]  # joined as given: it may hold sub-folders
        if not video.is_file():
            out.missing.append(entry["video"])
            continue
        texts = entry.get(key)
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        if not texts:
            out.missing.append(f"{entry['video']} (no {key})")
            continue
        out.add(entry["video"], {"video": str(video)}, *texts)
    return out


# ----------------------------------------------------------------------------- ShareGPT4V
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"


def sharegpt4v(data, *, limit: int | None = 1000) -> Retrieval:
    root = find_root(data, SHAREGPT4V_FILE)
    with open(root / SHAREGPT4V_FILE, encoding="utf-8") as fh:
        records = json.load(fh)
    out = Retrieval([], [], [], [], notes=["the first 1,000 records in file order (ShareGPT4V-1k)"])
    for record in records[: limit or 1000]:
        image = root / record["image"]
        if not image.is_file():
            out.missing.append(record["image"])
            continue
        caption = record["conversations"][1]["value"].replace("\n", " ")
        out.add(str(record.get("id", record["image"])), {"image": str(image)}, caption)
    return out


# ----------------------------------------------------------------------------- DOCCI
def docci(data, *, limit: int | None = None) -> Retrieval:
    root = find_root(data, "docci_descriptions.jsonlines")
    out = Retrieval([], [], [], [], notes=["test split; DOCCI ships no official retrieval script"])
    with open(root / "docci_descriptions.jsonlines", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    for record in [r for r in records if r.get("split") == "test"][:limit]:
        image = root / "images" / record["image_file"]
        if not image.is_file():
            out.missing.append(record["image_file"])
            continue
        out.add(record["example_id"], {"image": str(image)}, record["description"])
    return out


# ----------------------------------------------------------------------------- MSR-VTT
def msrvtt(data, *, limit: int | None = None) -> Retrieval:
    root = find_root(data, "MSRVTT_JSFUSION_test.csv")
    video_dirs = [root / "MSRVTT" / "videos" / "all", root / "videos" / "all", root / "videos"]
    video_dir = next((d for d in video_dirs if d.is_dir()), video_dirs[0])
    out = Retrieval([], [], [], [], frames=48, notes=["1k-A split (JSFusion); 48 frames"])
    with open(root / "MSRVTT_JSFUSION_test.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows[:limit]:
        video = video_dir / f"{row['video_id']}.mp4"
        if not video.is_file():
            out.missing.append(row["video_id"])
            continue
        out.add(row["video_id"], {"video": str(video)}, row["sentence"])
    return out


# ----------------------------------------------------------------------------- WebVid-CoVR
COVR_CSV = "annotation/webvid-covr/webvid8m-covr_test.csv"
COVR_VIDEOS = "datasets/WebVid/8M/train"


def webvid_covr(data, *, limit: int | None = None) -> Composed:
    root = find_root(data, COVR_CSV)
    videos = root / COVR_VIDEOS
    with open(root / COVR_CSV, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))  # extra columns are kept, unused
    unique: dict[str, dict[str, str]] = {}
    for row in rows:
        unique.setdefault(row["pth2"], row)  # one row per target
    out = Composed([], [], [], [], notes=["one row per unique pth2, sorted by pth2; 16 frames; query = video + edit"])
    for pth2 in sorted(unique)[:limit]:
        row = unique[pth2]
        ref, target = videos / f"{row['pth1']}.mp4", videos / f"{pth2}.mp4"
        absent = [p for p in (ref, target) if not p.is_file()]
        if absent:
            out.missing.append(pth2)
            continue
        out.queries.append({"video": str(ref), "text": row["edit"]})
        out.gallery.append({"video": str(target)})
        out.reference_ids.append(row["pth1"])
        out.target_ids.append(pth2)
    return out


# ----------------------------------------------------------------------------- MMEB
def _mmeb_item(text: str | None, image: str | None, images: Path) -> dict[str, Any] | None:
    item: dict[str, Any] = {}
    if text:
        text = text.replace(IMAGE_TOKEN, "").strip()
        if text:
            item["text"] = text
    if image:
        path = images / image
        if not path.is_file():
            return None
        item["image"] = str(path)
    return item or None


def mmeb(data, *, subsets: list[str] | None = None, limit: int | None = None) -> Reranking:
    import pyarrow.parquet as pq

    root = find_root(data, "eval_images")
    images = root / "eval_images"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and list(p.glob("*.parquet")))
    if subsets:
        unknown = set(subsets) - {p.name for p in folders}
        if unknown:
            raise DatasetError(f"MMEB subsets not found under {root}: {sorted(unknown)}")
        folders = [p for p in folders if p.name in subsets]
    if not folders:
        raise DatasetError(f"{root}: no MMEB subset folders with parquet files")
    out = Reranking({}, notes=[f"{IMAGE_TOKEN} removed from texts (the image goes before the text)"])
    for folder in folders:
        rows = []
        missing = 0
        for part in sorted(folder.glob("*.parquet")):
            for rec in pq.read_table(part).to_pylist():
                if limit is not None and len(rows) + missing >= limit:
                    break
                query = _mmeb_item(rec["qry_text"], rec.get("qry_img_path") or None, images)
                cands = [_mmeb_item(t, i or None, images) for t, i in zip(rec["tgt_text"], rec["tgt_img_path"],
                                                                           strict=True)]  # fmt: skip
                if query is None or any(c is None for c in cands):
                    missing += 1
                    continue
                rows.append((query, cands))
        out.datasets[folder.name] = rows
        out.missing[folder.name] = missing
    return out


LOADERS = {
    "urban1k": urban1k,
    "carebench": carebench,
    "sharegpt4v": sharegpt4v,
    "docci": docci,
    "msrvtt": msrvtt,
    "webvid-covr": webvid_covr,
    "mmeb": mmeb,
}
