"""Work units: a corpus turned into rows to encode, and each row's inputs prepared for the encoder.

A unit is one piece of content that becomes rows of one shard: an image, a video (one row per
segment when it is long), a text file (one row per passage), an image or video with its sidecar
caption (``pairs="composed"``), or an item declared in a ``*.jsonl`` manifest. Units are keyed by
content, so identical bytes at two paths are encoded once; each row records how many rows its unit
makes, so a unit cut short by a crash can be found and redone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
import os
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .batching import bounded_map, gc_paused
from .corpus import (
    OUTSIDE,
    READS,
    SIDECAR_EXTENSION,
    Entry,
    FileFacts,
    Problem,
    decode_text,
    is_inside,
    read_file,
    read_passage,
)
from .declared import Declared, parse_manifest
from .diskio import io_reason
from .errors import ConfigError, InputError
from .filecache import FileCache
from .memory import TEXT_COST, image_cost, video_cost
from .modality import Item, Modality
from .schema import row_key, shard_name

TEXT = Modality.TEXT.value
CAPTION_BYTES = 64 << 10  # a sidecar caption at most: it is read whole and stored with every row it labels


# A longer passage cannot fit the model's context (32,768 tokens) whatever its script, and a file cut into passages
# that long was held whole while its one passage was tokenized. Asked of a new run (an index built before keeps its
# own).
PASSAGE_CHARS_MAX = 32_768


@dataclass(frozen=True)
class IngestOptions:
    """How a corpus becomes rows. Recorded in the manifest; changing them needs a rebuild."""

    segment_seconds: float = 30.0
    segment_overlap: float | None = 5.0  # None: a sixth of segment_seconds
    passage_chars: int = 2000
    pairs: str = "none"  # "composed": also index each image/video with its sidecar caption as one item

    def __post_init__(self) -> None:
        for name in ("segment_seconds", "segment_overlap", "passage_chars"):
            value = getattr(self, name)
            if value is None and name == "segment_overlap":
                value = self.segment_seconds / 6  # 5 s of 30 s (segment_seconds is checked above)
            whole = name == "passage_chars"
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
                kind = "a whole number of characters" if whole else "a number of seconds"
                raise ConfigError(f"{name} must be {kind}, not {value!r}")
            object.__setattr__(self, name, int(value) if whole else float(value))  # numpy's, as plain numbers
        if self.segment_seconds <= 0 or not 0 <= self.segment_overlap < self.segment_seconds:
            raise ConfigError("need segment_seconds > 0 and 0 <= segment_overlap < segment_seconds")
        if self.passage_chars < 16:
            raise ConfigError("passage_chars must be at least 16")
        if self.pairs not in ("none", "composed"):
            raise ConfigError(f"pairs must be 'none' or 'composed', not {self.pairs!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    """One row to encode."""

    unit: str
    shard: str
    row: dict[str, Any]  # every stored column but the vector (and text, filled at decode time)
    item: dict[str, Any]  # text / image / video (absolute paths) for the encoder
    checks: tuple[tuple[str, int, int], ...] = ()  # (path, size, mtime_ns) that must not have changed
    span: tuple[float, float] | None = None  # video time range, seconds
    then: tuple[float, float] | None = None  # the file's next segment (an AVI's decoder goes on to it: videopass.py)
    chars: tuple[int, int, int, int] | None = None  # text passage: characters, then bytes, [start, end)
    probe: Any = None  # a video's read-stage Probe, so a segment read does not count frames again
    cost: int = TEXT_COST  # predicted peak bytes while its inputs are decoded and prepared (memory.py)


@dataclass(eq=False, slots=True)
class Unit:
    """Its tasks are made when first asked for: a rerun plans every unit of the corpus and encodes few, and
    what ``diff_units`` compares (rows, source, paths, caption) is known without them (a task and its row's
    dict took ~1.5 KB a unit the index already holds)."""

    key: str
    shard: str
    rows: int  # tasks it makes (rows of its shard)
    source: str | None  # its rows' source: "file", "pair" or a manifest line
    paths: tuple[str, ...]
    caption: str | None
    label: str  # path or manifest line, for failure reports
    remake: bool = False  # rows an earlier read-stage edition made otherwise, under the same key: made again
    content: str | None = None  # a file's or pair's: the file's sha256, which its rows' ids start with
    make: Callable[[], list[Task]] | None = field(default=None, repr=False)
    made: list[Task] | None = field(default=None, repr=False)

    @property
    def tasks(self) -> list[Task]:
        if self.made is None:
            self.made, self.make = self.make(), None
        return self.made


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------- read
def read_files(
    entries: list[Entry], cache: FileCache | None, options: IngestOptions, workers: int, progress: bool
) -> tuple[dict[str, FileFacts], list[Problem]]:
    """The read stage: cached facts for unchanged files, a fresh hash and probe for the rest."""
    from tqdm.auto import tqdm

    if not isinstance(cache, FileCache):  # none (a caller without an index): every file is read
        cache = FileCache()
    at = cache.find(entries)
    known = cache.same_stat(entries, at)
    # rows an earlier read-stage edition wrote (only those are read again), judged one by one
    for i in np.flatnonzero(known)[cache.reads(at[known]) < READS]:
        known[i] = not _read_again(cache.row(at[i]))
    hits = np.flatnonzero(known)
    facts = {f.rel: f for f in cache.facts(at[hits], [entries[i] for i in hits])}
    todo = np.flatnonzero(~known).tolist()

    def one(i: int):
        # A file's own fault (bad content, a decoder's complaint, an I/O error) fails that file; anything
        # else (a bug, MemoryError) stops the run, its traceback kept in the run log.
        entry = entries[i]
        try:
            return i, read_file(entry, passage_chars=options.passage_chars)
        except InputError as exc:
            return i, Problem(entry.rel, "read", exc.reason, exc.detail)
        except OSError as exc:
            detail = f"{type(exc).__name__}: {exc}"
            return i, Problem(entry.rel, "read", f"cannot read file: {io_reason(exc)}", detail)

    problems = []
    with tqdm(total=len(todo), unit="file", desc="read", disable=not progress or not todo) as bar:
        for i, got in bounded_map(one, todo, workers, lookahead=4 * workers):
            if isinstance(got, Problem):
                problems.append(got)
            else:
                facts[entries[i].rel] = _remade(got, cache.row(at[i]))
            bar.update(1)
    return facts, problems


def _remade(facts: FileFacts, row: dict[str, Any] | None) -> FileFacts:
    """``facts`` marked ``remake`` when the same bytes were read again for the cache's older edition and that
    edition made their rows otherwise (same hash, same key: only this tells the rows are stale): a TIFF's
    always (its size, its float pixels), a text's when it is now cut into other passages. (A video read again
    keeps its rows unless its frame rate varies: its key says so.)"""
    if row is None or row["sha256"] != facts.sha256 or not _read_again(row):
        return facts
    if facts.modality == Modality.IMAGE.value:
        return replace(facts, remake=True)
    spans = [x for span in facts.passages for x in span]
    if facts.modality == Modality.TEXT.value and spans != list(row["spans"] or []):
        return replace(facts, remake=True)
    return facts


def _read_again(row: dict[str, Any]) -> bool:
    """Whether a file cached by an earlier read-stage edition is read again: a video before 2 (its frame rate
    was not checked), a TIFF before 3 (a portrait one's width and height were swapped), a text before 3 (cut
    into passages by other rules)."""
    if row["modality"] == Modality.VIDEO.value:
        return row["reads"] < 2
    if row["modality"] == Modality.TEXT.value:
        return row["reads"] < 3
    return row["modality"] == Modality.IMAGE.value and row["reads"] < 3 and _is_tiff(row["rel"])


def _is_tiff(rel: str) -> bool:
    return rel.lower().endswith((".tif", ".tiff"))


def _made_otherwise_before(d: Declared, media: dict[str, FileFacts]) -> bool:
    """Whether earlier versions made a manifest item's row otherwise: one with media held a hash of the whole
    item as its content_hash before 2026-11-29 (a composed query did not leave its own reference out); one whose
    text has leading or trailing whitespace held its text as written before 2026-11-30."""
    return bool(media) or (d.text is not None and d.text != d.text.strip())


def _entry_for(path: str, root: str) -> Entry | None:
    from .corpus import claimed_kind

    try:
        st = os.stat(path)
    except OSError:
        return None
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if rel.startswith("../"):
        rel = path  # outside the corpus: keyed by absolute path
    kind = claimed_kind(path)
    return Entry(rel, path, st.st_size, st.st_mtime_ns, kind) if kind in ("image", "video") else None


def find_captions(media: list[Entry], facts: dict[str, FileFacts]):
    """Sidecar captions (``x.txt`` beside ``x.jpg``/``x.mp4``): (media rel -> caption, sidecar rels, problems)."""
    stems: dict[str, list[str]] = defaultdict(list)  # clip.txt captions clip.mp4 and clip.webm alike
    for e in media:
        if e.kind in ("image", "video"):
            stems[os.path.splitext(e.rel)[0]].append(e.rel)
    captions: dict[str, str] = {}
    sidecars: set[str] = set()
    problems: list[Problem] = []
    for e in media:
        stem, ext = os.path.splitext(e.rel)
        if ext.lower() != SIDECAR_EXTENSION or stem not in stems:
            continue
        sidecars.add(e.rel)
        if e.rel not in facts:  # its read failure is already reported
            continue
        if facts[e.rel].size > CAPTION_BYTES:  # a caption is read whole: bound it
            size = facts[e.rel].size
            reason = f"caption file is {size} bytes, above {CAPTION_BYTES}; the media is indexed without it"
            problems.append(Problem(e.rel, "read", reason))
            continue
        try:
            with open(e.path, "rb") as fh:
                caption = decode_text(fh.read(CAPTION_BYTES + 1), e.rel).strip()
        except OSError as exc:
            problems.append(Problem(e.rel, "read", f"cannot read caption: {exc.strerror or exc}"))
            continue
        except InputError as exc:
            problems.append(Problem(e.rel, "read", exc.reason))
            continue
        for rel in stems[stem]:
            captions[rel] = caption
    return captions, sidecars, problems


def declared_items(manifests: list[Entry], facts, cache, root: str, options, workers: int, allow_outside=False):
    """Items of every ``*.jsonl`` manifest with the facts of the media they name.

    Media outside the corpus folder (symlinks resolved) are refused unless ``allow_outside``; the
    refusal is decided on the path alone, so it does not tell whether such a file exists.
    """
    if not manifests:  # nothing declared (and no dict of every file's facts by path)
        return [], []
    failures: list[Problem] = []
    items: list[Declared] = []
    seen: dict[str, str] = {}
    root_real = os.path.realpath(root)
    for m in manifests:
        got, problems = parse_manifest(m)
        failures += problems
        for d in got:
            outside = [k for k in ("image", "video") if getattr(d, k) and not is_inside(getattr(d, k), root_real)]
            if outside and not allow_outside:
                failures.append(Problem(d.source, "manifest", f"{outside[0]} {d.raw[outside[0]]!r} is {OUTSIDE}"))
                continue
            if d.id in seen:
                failures.append(Problem(d.source, "manifest", f"id {d.id!r} is already declared at {seen[d.id]}"))
            else:
                seen[d.id] = d.source
                items.append(d)
    by_path = {f.path: f for f in facts.values()}
    named = sorted({p for d in items for p in (d.image, d.video) if p is not None} - set(by_path))
    extra = [e for e in (_entry_for(p, root) for p in named) if e is not None]
    more, problems = read_files(extra, cache, options, workers, progress=False)
    facts.update(more)
    by_path.update({f.path: f for f in more.values()})
    why_not = {os.path.join(root, p.path) if not os.path.isabs(p.path) else p.path: p.reason for p in problems}
    kept: list[tuple[Declared, dict[str, FileFacts]]] = []
    for d in items:
        media: dict[str, FileFacts] = {}
        for kind in ("image", "video"):
            path = getattr(d, kind)
            if path is None:
                continue
            f = by_path.get(path)
            if f is None or f.modality != kind:
                shown = os.path.relpath(path, root)
                reason = why_not.get(path) or ("not found" if not os.path.exists(path) else f"not a readable {kind}")
                failures.append(Problem(d.source, "manifest", f"{kind} {shown}: {reason}"))
                break
            media[kind] = f
        else:
            kept.append((d, media))
    return kept, failures


# ---------------------------------------------------------------------------------------- plan
def _base_row(unit: str, unit_rows: int, modality: str, source: str, row_id: str, **cols) -> dict[str, Any]:
    row = {"id": row_id, "key": row_key(row_id), "unit": unit, "unit_rows": unit_rows, "modality": modality}
    row["source"] = source
    row.update(cols)
    return row


def _media_tasks(
    unit: str, shard: str, f: FileFacts, paths: tuple[str, ...], caption, options, settings, text=None
) -> list[Task]:
    common = {"path": paths[0], "paths": list(paths), "content_hash": f.sha256, "size": f.size}
    common.update(mtime=f.mtime_ns / 1e9, width=f.width, height=f.height, caption=caption, text=text)
    checks = ((f.path, f.size, f.mtime_ns),)
    item_text = {"text": text} if text is not None else {}
    source = "pair" if text is not None else "file"
    suffix = f"+{_sha(text)[:8]}" if text is not None else ""
    if f.modality == Modality.IMAGE.value:
        row = _base_row(unit, 1, shard, source, f.sha256[:16] + suffix, **common)
        cost = image_cost(f.width, f.height, settings)
        return [Task(unit, shard, row, {"image": f.path, **item_text}, checks, cost=cost)]
    probe = f.probe()
    spans = [(0.0, probe.duration)] if text is not None else segment_spans(probe.duration, *_seg(options))
    tasks = []
    for j, (start, end) in enumerate(spans):
        whole = len(spans) == 1
        row_id = f.sha256[:16] + suffix + ("" if whole else f"@{start:g}-{end:g}")
        frames = _frames_used(probe, settings, None if whole else start, None if whole else end)
        row = _base_row(unit, len(spans), shard, source, row_id, duration=probe.duration, frames=frames, **common)
        row.update(start=start, end=end)
        span = None if whole else (start, end)
        cost = video_cost(f.width, f.height, frames, settings)
        then = spans[j + 1] if j + 1 < len(spans) else None
        item = {"video": f.path, **item_text}
        tasks.append(Task(unit, shard, row, item, checks, span, then, probe=probe, cost=cost))
    return tasks


def _media_rows(f: FileFacts, options: IngestOptions) -> int:
    """The rows ``_media_tasks`` makes of a file (not a pair's: one)."""
    if f.modality == Modality.IMAGE.value:
        return 1
    return len(segment_spans(f.probe().duration, *_seg(options)))


def _text_tasks(key: str, f: FileFacts, paths: tuple[str, ...], caption) -> list[Task]:
    tasks = []
    for i, (a, b, byte_a, byte_b) in enumerate(f.passages):
        row_id = f.sha256[:16] if len(f.passages) == 1 else f"{f.sha256[:16]}#{i}"
        common = {"path": paths[0], "paths": list(paths), "content_hash": f.sha256, "size": f.size}
        common.update(mtime=f.mtime_ns / 1e9, char_start=a, char_end=b, caption=caption)
        row = _base_row(key, len(f.passages), f.modality, "file", row_id, **common)
        checks = ((f.path, f.size, f.mtime_ns),)
        tasks.append(Task(key, f.modality, row, {}, checks, chars=(a, b, byte_a, byte_b)))
    return tasks


def _seg(options: IngestOptions) -> tuple[float, float]:
    return options.segment_seconds, options.segment_overlap


def _frames_used(probe, settings, start, end) -> int:
    from .video import frames_sampled

    try:
        return frames_sampled(probe, settings, start, end)
    except InputError:
        return 0


@gc_paused
def plan_units(
    facts: dict[str, FileFacts],
    captions: dict[str, str],
    sidecars: set[str],
    declared: list[tuple[Declared, dict[str, FileFacts]]],
    options: IngestOptions,
    settings,
    named_only: Collection[str] = (),
) -> list[Unit]:
    """Work units for the corpus: file content grouped by hash, pairs, declared items. ``named_only``:
    files the walk did not take (hidden ones), there only because a manifest names them."""
    # by "modality/sha256", which sorts as (modality, sha256) does (no modality is another's prefix) and faster
    by_content: dict[str, list[FileFacts]] = defaultdict(list)
    for f in facts.values():
        if f.rel in sidecars:  # captions are not items of their own
            continue
        if os.path.isabs(f.rel) or f.rel in named_only:  # items only as the manifest's lines
            continue
        by_content[f"{f.modality}/{f.sha256}"].append(f)
    units: list[Unit] = []
    for content, group in sorted(by_content.items()):
        if len(group) > 1:
            group.sort(key=lambda g: g.rel)
        first, paths = group[0], tuple(g.rel for g in group)
        modality, sha = first.modality, first.sha256
        captioned: dict[str, list[FileFacts]] = {}  # copies of one file may carry different captions
        for g in group if captions else ():
            if g.rel in captions:
                captioned.setdefault(captions[g.rel], []).append(g)
        caption = next(iter(captioned), None)  # the row's: its first captioned path's
        # a variable-rate clip's segments are found by their timestamps (versions before 'vfr' was read found
        # them through the average rate): a key of its own replaces the rows read that way
        timed = "/timed" if first.vfr else ""
        key = content + timed
        if modality == TEXT:
            rows, make = len(first.passages), functools.partial(_text_tasks, key, first, paths, caption)
        else:
            rows = _media_rows(first, options)
            make = functools.partial(_media_tasks, key, modality, first, paths, caption, options, settings)
        units.append(Unit(key, modality, rows, "file", paths, caption, paths[0], first.remake, sha, make))
        for text, copies in captioned.items() if options.pairs == "composed" else ():  # a pair for each caption
            shard = shard_name({Modality(modality), Modality.TEXT})
            pair_key, named = f"{shard}/{sha}/{_sha(text)}" + timed, tuple(g.rel for g in copies)
            make = functools.partial(_media_tasks, pair_key, shard, copies[0], named, text, options, settings, text)
            units.append(Unit(pair_key, shard, 1, "pair", named, text, named[0], first.remake, sha, make))
    for d, media in declared:
        modalities = {Modality.TEXT} if d.text is not None else set()
        parts: dict[str, Any] = {"text": d.text, "metadata": d.metadata}
        checks, row_cols, cost = [], {}, TEXT_COST
        for kind in ("image", "video"):
            f = media.get(kind)
            if f is not None:
                modalities.add(Modality(kind))
                parts[kind] = f.sha256
                if f.vfr:  # as a file's key (above): the row of before holds the length the average rate gave
                    parts["timed"] = True
                checks.append((f.path, f.size, f.mtime_ns))
                row_cols.update(width=f.width, height=f.height)
                cost += image_cost(f.width, f.height, settings) if kind == "image" else 0
                if kind == "video":
                    probe = f.probe()
                    frames = _frames_used(probe, settings, None, None)
                    row_cols.update(duration=probe.duration, frames=frames)
                    cost += video_cost(f.width, f.height, frames, settings)
                    row_cols.update(start=0.0, end=probe.duration)
        if _made_otherwise_before(d, media):
            parts["row"] = 2  # a key of its own: the rows made before are replaced
        shard = shard_name(modalities)
        content = _sha(json.dumps(parts, sort_keys=True))
        key = f"{shard}/id:{d.id}/{content}"
        media_paths = [m.rel for m in media.values()]
        meta = json.dumps(d.metadata, sort_keys=True) if d.metadata is not None else None
        row = _base_row(key, 1, shard, d.source, d.id, path=media_paths[0] if media_paths else None)
        # a row with media carries its file's hash, as a pair's row does: a composed query excludes the rows
        # of its own reference file by it (the unit's key above tells a changed item)
        media_hash = next((parts[k] for k in ("image", "video") if k in parts), content)  # the file at path
        text = d.text.strip() if d.text is not None else None  # as the model sees it (the encoder strips it)
        row.update(paths=media_paths, content_hash=media_hash, text=text, metadata=meta, **row_cols)
        item = {"text": d.text, "image": d.image, "video": d.video}
        task = Task(key, shard, row, item, tuple(checks), cost=cost)  # made now: without_clashing_ids reads its id
        units.append(Unit(key, shard, 1, d.source, tuple(media_paths), None, d.source, made=[task]))
    return units


# -------------------------------------------------------------------------------------- decode
def prepare_task(encoder, task: Task):
    """Read, decode and preprocess one row's inputs (a worker thread): (text column, Prepared)."""
    for path, size, mtime_ns in task.checks:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise InputError("file disappeared during ingest", source=path) from None
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            raise InputError("file changed during ingest; run ingest again to pick up the new content", source=path)
    if task.chars is not None:
        text = read_passage(task.checks[0][0], task.chars, task.checks[0][0])
        return text, encoder.prepare(Item(text=text))
    if task.probe is not None:  # a corpus video (or segment): sampled by the read stage's frame count
        start, end = task.span if task.span is not None else (None, None)
        video = encoder.visual("video", task.item["video"], start=start, end=end, probe=task.probe, then=task.then)
        return task.row.get("text"), encoder.prepare(Item(video=video, text=task.item.get("text")))
    return task.row.get("text"), encoder.prepare(Item(**{k: v for k, v in task.item.items() if v is not None}))


def without_clashing_ids(units: list[Unit]) -> tuple[list[Unit], list[Problem]]:
    """A declared item whose id is the id of a file's row (``231aa9e1aec99274``, as hits show it) would give two
    rows one id, and the lookups by id one of them: the item is refused, as a line of its manifest."""
    declared = [u for u in units if u.source not in (None, "file", "pair")]  # a manifest's items
    if not declared:
        return units, []
    # a file's rows' ids begin with 16 characters of its sha256: only the files whose hash begins as a declared id
    # does have their rows made here
    heads = {u.tasks[0].row["id"][:16] for u in declared}
    owners = {t.row["id"]: t.row.get("path") for u in units if u.source in ("file", "pair") and u.content[:16] in heads
              for t in u.tasks}  # fmt: skip
    kept, problems = [], []
    for unit in units:
        if unit.source not in (None, "file", "pair") and (row := unit.tasks[0].row)["id"] in owners:
            why = f"id {row['id']!r} is the id of the row of {owners[row['id']]}; give the item another id"
            problems.append(Problem(row["source"], "manifest", why))
        else:
            kept.append(unit)
    return kept, problems


@dataclass
class Diff:
    """What a run does to the index: units to encode, rows to remove, labels to update, and the counts."""

    todo: list[Unit]
    remove: dict[str, set[str]]
    relabel: dict[str, dict[str, tuple]]
    unchanged: int = 0
    removed: int = 0
    redone: int = 0
    kept: int = 0  # held where the walk could not look: kept as they were (counted as unchanged too)


def _unseen(state, unseen: Collection[str]) -> bool:
    """Whether a unit the index holds lies in a folder (or is a file) the walk could not look at."""
    files = [*state.paths, *([state.source.rsplit(":", 1)[0]] if ":" in (state.source or "") else [])]
    return any(f == u or f.startswith(u + "/") for f in files for u in unseen)


@gc_paused
def diff_units(units: list[Unit], tables, shards: Collection[str], unseen: Collection[str] = ()) -> Diff:
    """The planned ``units`` against what ``tables`` hold in each of ``shards``. A held unit no longer planned is
    removed, unless it lies where the walk could not look (``unseen``: a folder that could not be listed is not
    a folder emptied); one a killed run cut short is encoded again."""
    by_key = {u.key: u for u in units}
    out = Diff([], defaultdict(set), defaultdict(dict))
    for shard in sorted(shards):
        held: set[str] = set()  # planned keys the shard holds
        for key, state in tables.held_units(shard):  # streamed: no dict of the shard's units
            unit = by_key.get(key)
            if unit is not None:
                held.add(unit.key)
            if unit is None and not _unseen(state, unseen):
                out.remove[shard].add(key)
                out.removed += 1
            elif unit is None:
                out.unchanged += 1
                out.kept += 1
            elif unit.remake:  # made otherwise by an earlier read-stage edition: its rows go, the new ones come
                out.remove[shard].add(key)
                out.removed += 1
                out.todo.append(unit)
            elif state.rows != state.expected or state.expected != unit.rows:
                out.remove[shard].add(key)  # cut short by a killed run: redo it whole
                out.redone += 1
                out.todo.append(unit)
            else:
                out.unchanged += 1
                now = (unit.paths, unit.caption, unit.source)  # a manifest line may have moved
                if (state.paths, state.caption, state.source) != now:
                    out.relabel[shard][key] = now
        out.todo += [u for u in units if u.shard == shard and u.key not in held]
    return out


def segment_spans(duration: float, seconds: float, overlap: float) -> list[tuple[float, float]]:
    """Overlapping [start, end) windows covering a clip; one window when it is short enough.

    >>> segment_spans(70, 30, 5)
    [(0.0, 30.0), (25.0, 55.0), (50.0, 70.0)]
    """
    if seconds <= 0 or not 0 <= overlap < seconds:
        raise ConfigError("need segment seconds > 0 and 0 <= overlap < seconds")
    if duration <= seconds:
        return [(0.0, float(duration))]
    stride, spans, start = seconds - overlap, [], 0.0
    while True:
        end = min(start + seconds, float(duration))
        spans.append((round(start, 3), round(end, 3)))
        if end >= duration - 1e-9 * max(1.0, duration):  # start's sum of strides may fall an ulp short
            return spans
        start += stride
