"""Benchmark loaders: each reads its dataset exactly as distributed (layouts in ``shared/docs/benchmarks.md``).

Every loader accepts the folder a user downloaded or unzipped (an extra top-level folder is fine),
ignores stray files, and counts the items whose media file is missing instead of dropping them
silently. A damaged file (JSON, CSV or parquet that does not parse, a record without its fields, a row
cut short) is a :class:`DatasetError` naming the file and record, never a number computed from part of
a record. The files a dataset names are read only inside the folder the user named (symlinks followed)
unless ``allow_outside=True``: one leading out is an error, decided before the file is looked at.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..corpus import Confined
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


class _Dataset:
    """The folder a user named and its benchmark's root in it: the files a record names are checked here."""

    def __init__(self, data: str | os.PathLike, markers: tuple[str, ...], allow_outside: bool):
        self.root = find_root(data, *markers)
        self.named = None if allow_outside else Confined.of(Path(data).expanduser())
        for marker in markers:
            self.inside(self.root / marker, marker)

    def inside(self, path: Path, where: str) -> Path:
        """``path`` when it is inside the named folder (symlinks followed), else a DatasetError."""
        if self.named is not None and not self.named.holds(path):
            raise DatasetError(
                f"{where}: {path} leads outside the dataset folder {self.named.given}; pass allow_outside=True "
                "(--allow-outside) to read it"
            )
        return path

    def file(self, base: Path, name: Any, where: str) -> Path:
        """The file a record names, relative to ``base``: a relative name that stays inside the folder."""
        if not isinstance(name, str) or not name or "\x00" in name:
            raise DatasetError(f"{where}: {name!r} is not a file name")
        if os.path.isabs(name):
            raise DatasetError(f"{where}: {name!r} is an absolute path; the dataset's files name relative ones")
        return self.inside(base / name, where)

    def json(self, rel: str) -> Any:
        path = self.root / rel
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise DatasetError(f"{path}: not valid JSON ({exc}); download it again") from None

    def records(self, rel: str, limit: int | None) -> list[tuple[str, dict[str, Any]]]:
        """A JSON file's first ``limit`` records (all: None), each with where it is (``file record N``)."""
        records = self.json(rel)
        if not isinstance(records, list):
            raise DatasetError(f"{self.root / rel}: holds a {type(records).__name__}, not a list of records")
        return [(f"{rel} record {i}", _record(r, f"{rel} record {i}")) for i, r in enumerate(records[:limit], 1)]

    def csv_rows(self, rel: str, columns: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
        """A CSV file's rows with the named columns non-empty, each with where it is (``file:line``)."""
        path = self.root / rel
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                absent = [c for c in columns if c not in (reader.fieldnames or [])]
                if absent:
                    raise DatasetError(f"{path}: no column {', '.join(absent)} in its header")
                rows = [(reader.line_num, row) for row in reader]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not a readable CSV file ({exc}); download it again") from None
        for line, row in rows:
            where = f"{rel}:{line}"
            extra = row.pop(None, [])  # fields past the header's
            given = sum(v is not None for v in row.values()) + len(extra)
            if extra or given < len(row):
                raise DatasetError(f"{where}: {given} fields where the header names {len(row)} (a row cut short, or "
                                   "an unquoted comma)")  # fmt: skip
            empty = [c for c in columns if not row[c].strip()]
            if empty:
                raise DatasetError(f"{where}: empty {', '.join(empty)}")
            yield where, row


def _record(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: a {type(value).__name__}, not a record (an object)")
    return value


def _field(record: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind):
        told = "missing" if key not in record else f"a {type(value).__name__}"
        raise DatasetError(f"{where}: field {key!r} is {told}")
    return value


def _first_line(path: Path) -> str:
    """The file's first line, stripped: lines end at \\n, \\r\\n or \\r only, as a file read line by line
    (``str.splitlines`` would also cut at form feeds, U+2028 and the like, which a caption may hold)."""
    with open(path, encoding="utf-8", errors="replace") as fh:  # universal newlines: CR and CRLF read as LF
        return fh.readline().strip()


# ----------------------------------------------------------------------------- Urban1K
def urban1k(data, *, limit: int | None = None, allow_outside: bool = False) -> Retrieval:
    ds = _Dataset(data, ("caption", "image"), allow_outside)
    root = ds.root
    stems = {
        p.stem for folder, ext in (("caption", ".txt"), ("image", ".jpg")) for p in (root / folder).glob(f"*{ext}")
    }
    out = Retrieval([], [], [], [], notes=["caption = first line of caption/<n>.txt; pairs by numeric stem"])
    for stem in sorted((s for s in stems if s.isascii() and s.isdigit()), key=int)[:limit]:  # not "²": a stray
        caption = ds.inside(root / "caption" / f"{stem}.txt", f"caption/{stem}.txt")
        image = ds.inside(root / "image" / f"{stem}.jpg", f"image/{stem}.jpg")
        if not image.is_file():
            out.missing.append(stem)
            continue
        text = _first_line(caption) if caption.is_file() else ""
        if not text:  # a pair without its caption (a partial unzip) is counted, not dropped from the gallery
            out.missing.append(f"{stem} (no caption)")
            continue
        out.add(stem, {"image": str(image)}, text)
    return out


# ----------------------------------------------------------------------------- CaReBench
CAREBENCH_FIELDS = {"general": "caption", "spatial": "spatial_caption", "temporal": "temporal_caption"}


def carebench(data, *, variant: str = "general", limit: int | None = None, allow_outside: bool = False) -> Retrieval:
    if variant not in CAREBENCH_FIELDS:
        raise DatasetError(f"CaReBench variant is general, spatial or temporal, not {variant!r}")
    ds = _Dataset(data, ("json/metadata.json",), allow_outside)
    key = CAREBENCH_FIELDS[variant]
    out = Retrieval([], [], [], [], frames=32, sampler="segment-middle")
    out.notes.append(f"{variant}: text from {key!r}; 32 frames, middle of 32 equal segments")
    for where, entry in ds.records("json/metadata.json", limit):
        name = _field(entry, "video", where)
        video = ds.file(ds.root / "videos", name, where)  # joined as given: it may hold sub-folders
        if not video.is_file():
            out.missing.append(name)
            continue
        texts = entry.get(key)
        texts = (
            [texts] if isinstance(texts, str) else texts if isinstance(texts, list) else [] if texts is None else None
        )
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise DatasetError(f"{where}: field {key!r} is neither a caption nor a list of captions")
        texts = [t for t in texts if t.strip()]
        if not texts:
            out.missing.append(f"{name} (no {key})")
            continue
        out.add(name, {"video": str(video)}, *texts)
    return out


# ----------------------------------------------------------------------------- ShareGPT4V
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"


def sharegpt4v(data, *, limit: int | None = 1000, allow_outside: bool = False) -> Retrieval:
    ds = _Dataset(data, (SHAREGPT4V_FILE,), allow_outside)
    out = Retrieval([], [], [], [], notes=["the first 1,000 records in file order (ShareGPT4V-1k)"])
    for where, record in ds.records(SHAREGPT4V_FILE, limit or 1000):
        name = _field(record, "image", where)
        image = ds.file(ds.root, name, where)
        if not image.is_file():
            out.missing.append(name)
            continue
        talk = _field(record, "conversations", where, list)
        answer = _record(talk[1], f"{where}, its second turn") if len(talk) > 1 else None
        if answer is None:
            raise DatasetError(f"{where}: 'conversations' has no second turn (the caption)")
        caption = _field(answer, "value", f"{where}, its second turn").replace("\n", " ")
        out.add(str(record.get("id", name)), {"image": str(image)}, caption)
    return out


# ----------------------------------------------------------------------------- DOCCI
DOCCI_FILE = "docci_descriptions.jsonlines"


def docci(data, *, limit: int | None = None, allow_outside: bool = False) -> Retrieval:
    ds = _Dataset(data, (DOCCI_FILE,), allow_outside)
    out = Retrieval([], [], [], [], notes=["test split; DOCCI ships no official retrieval script"])
    records = []
    with open(ds.root / DOCCI_FILE, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{DOCCI_FILE}:{number}"
            if not raw.strip():
                continue
            try:
                records.append((where, _record(json.loads(raw), where)))
            except (ValueError, UnicodeDecodeError) as exc:
                raise DatasetError(f"{where}: not a JSON record ({exc}); download the file again") from None
    for where, record in [(w, r) for w, r in records if r.get("split") == "test"][:limit]:
        name = _field(record, "image_file", where)
        image = ds.file(ds.root / "images", name, where)
        if not image.is_file():
            out.missing.append(name)
            continue
        out.add(_field(record, "example_id", where), {"image": str(image)}, _field(record, "description", where))
    return out


# ----------------------------------------------------------------------------- MSR-VTT
MSRVTT_CSV = "MSRVTT_JSFUSION_test.csv"


def msrvtt(data, *, limit: int | None = None, allow_outside: bool = False) -> Retrieval:
    ds = _Dataset(data, (MSRVTT_CSV,), allow_outside)
    video_dirs = [ds.root / "MSRVTT" / "videos" / "all", ds.root / "videos" / "all", ds.root / "videos"]
    video_dir = next((d for d in video_dirs if d.is_dir()), video_dirs[0])
    out = Retrieval([], [], [], [], frames=48, notes=["1k-A split (JSFusion); 48 frames"])
    for where, row in itertools.islice(ds.csv_rows(MSRVTT_CSV, ("video_id", "sentence")), limit):
        video = ds.file(video_dir, f"{row['video_id']}.mp4", where)
        if not video.is_file():
            out.missing.append(row["video_id"])
            continue
        out.add(row["video_id"], {"video": str(video)}, row["sentence"])
    return out


# ----------------------------------------------------------------------------- WebVid-CoVR
COVR_CSV = "annotation/webvid-covr/webvid8m-covr_test.csv"
COVR_VIDEOS = "datasets/WebVid/8M/train"


def webvid_covr(data, *, limit: int | None = None, allow_outside: bool = False) -> Composed:
    ds = _Dataset(data, (COVR_CSV,), allow_outside)
    videos = ds.root / COVR_VIDEOS
    unique: dict[str, tuple[str, dict[str, str]]] = {}
    for where, row in ds.csv_rows(COVR_CSV, ("pth1", "pth2", "edit")):  # extra columns are kept, unused
        unique.setdefault(row["pth2"], (where, row))  # one row per target
    out = Composed([], [], [], [], notes=["one row per unique pth2, sorted by pth2; 16 frames; query = video + edit"])
    for pth2 in sorted(unique)[:limit]:
        where, row = unique[pth2]
        ref, target = (ds.file(videos, f"{name}.mp4", where) for name in (row["pth1"], pth2))
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
MMEB_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")


def _mmeb_item(ds: _Dataset, text: Any, image: Any, where: str) -> dict[str, Any] | None:
    item: dict[str, Any] = {}
    if text is not None and not isinstance(text, str):
        raise DatasetError(f"{where}: a text that is a {type(text).__name__}")
    if text:
        text = text.replace(IMAGE_TOKEN, "").strip()
        if text:
            item["text"] = text
    if image:
        path = ds.file(ds.root / "eval_images", image, where)
        if not path.is_file():
            return None
        item["image"] = str(path)
    return item or None  # neither text nor image: skipped with the rows missing media


def _mmeb_rows(part: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(part)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{part}: not a readable parquet file ({exc}); download it again") from None
    absent = [c for c in MMEB_COLUMNS if c not in table.column_names]
    if absent:
        raise DatasetError(f"{part}: no column {', '.join(absent)}")
    return table.select(list(MMEB_COLUMNS)).to_pylist()


def mmeb(data, *, subsets: list[str] | None = None, limit: int | None = None, allow_outside: bool = False) -> Reranking:
    ds = _Dataset(data, ("eval_images",), allow_outside)
    root = ds.root
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
            name = f"{folder.name}/{part.name}"
            for number, rec in enumerate(_mmeb_rows(ds.inside(part, name)), 1):
                if limit is not None and len(rows) + missing >= limit:
                    break
                where = f"{name} row {number}"
                texts, images = rec["tgt_text"], rec["tgt_img_path"]
                if (
                    not isinstance(texts, list)
                    or not isinstance(images, list)
                    or len(texts) != len(images)
                    or not texts
                ):
                    raise DatasetError(f"{where}: tgt_text and tgt_img_path are not two lists of one length")
                query = _mmeb_item(ds, rec["qry_text"], rec["qry_img_path"], f"{where}, query")
                cands = [
                    _mmeb_item(ds, t, i, f"{where}, candidate {c}")
                    for c, (t, i) in enumerate(zip(texts, images, strict=True))
                ]
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
