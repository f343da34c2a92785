"""``ingest``: a folder in, a persistent modality-partitioned index out. Resumable and incremental.

Stages: discover (walk the folder) -> read (hash, sniff, probe; cached by size and mtime) -> plan
(work units by content, diffed against the index) -> decode (worker threads, bounded look-ahead)
-> encode (token-budget batches) -> write (a writer thread appends to LanceDB in batches) ->
publish (compact, build FAISS, replace the manifest).

A unit is one piece of content that becomes rows of one shard: an image, a video (one row per
segment when it is long), a text file (one row per passage), an image or video with its sidecar
caption (``pairs="composed"``), or an item declared in a ``*.jsonl`` manifest. Units are keyed by
content, so identical bytes at two paths are encoded once; each row records how many rows its unit
makes, so a unit cut short by a crash is found and redone on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import ann
from .batching import bounded_map
from .corpus import (
    SIDECAR_EXTENSION,
    Declared,
    Entry,
    FileFacts,
    Problem,
    decode_text,
    parse_manifest,
    read_file,
    walk,
)
from .errors import InputError, UniteError
from .modality import Item, Modality
from .store import IndexStore, row_key, shard_name

DEFAULT_HOME = "indexes"
COMMIT_ROWS = 1024
EXIT_OK, EXIT_FAILED, EXIT_SKIPPED = 0, 1, 3


class IngestError(UniteError):
    """An ingest stopped: under ``on_error="raise"``, the first bad input (nothing was published)."""

    def __init__(self, message: str, problem: Problem | None = None):
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class IngestOptions:
    """How a corpus becomes rows. Recorded in the manifest; changing them needs a rebuild."""

    segment_seconds: float = 30.0
    segment_overlap: float = 5.0
    passage_chars: int = 2000
    pairs: str = "none"  # "composed": also index each image/video with its sidecar caption as one item

    def __post_init__(self) -> None:
        if self.segment_seconds <= 0 or not 0 <= self.segment_overlap < self.segment_seconds:
            raise ValueError("need segment_seconds > 0 and 0 <= segment_overlap < segment_seconds")
        if self.passage_chars < 16:
            raise ValueError("passage_chars must be at least 16")
        if self.pairs not in ("none", "composed"):
            raise ValueError(f"pairs must be 'none' or 'composed', not {self.pairs!r}")

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
    chars: tuple[int, int] | None = None  # text passage, characters
    sha256: str | None = None  # text file content, re-checked when the passage is read


@dataclass
class Unit:
    key: str
    shard: str
    tasks: list[Task]
    paths: tuple[str, ...]
    caption: str | None
    label: str  # path or manifest line, for failure reports


@dataclass
class IngestReport:
    """What an ingest did. ``status``: ``ok``, ``skipped`` (finished, some inputs failed) or ``failed``."""

    index: str
    corpus: str
    model: str
    status: str = "ok"
    items: int = 0  # units in the corpus now
    encoded_items: int = 0
    encoded_rows: int = 0
    unchanged_items: int = 0
    relabeled_items: int = 0  # same content, new paths or caption: updated without re-encoding
    removed_items: int = 0  # gone from the corpus, removed from the index
    redone_items: int = 0  # found unfinished (a killed run) and encoded again
    shards: dict[str, int] = field(default_factory=dict)  # rows per shard, as published
    failures: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    ignored_files: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    published: bool = False
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return {"ok": EXIT_OK, "skipped": EXIT_SKIPPED}.get(self.status, EXIT_FAILED)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = [p.to_dict() for p in self.failures]
        out["skipped"] = [p.to_dict() for p in self.skipped]
        return out

    def summary(self) -> str:
        lines = [
            f"index {self.index}: {sum(self.shards.values())} rows in {len(self.shards)} shard(s) "
            + ", ".join(f"{s} {n}" for s, n in sorted(self.shards.items())),
            f"items {self.items}: encoded {self.encoded_items} ({self.encoded_rows} rows), "
            f"unchanged {self.unchanged_items}, paths updated {self.relabeled_items}, removed {self.removed_items}"
            + (f", redone after an interrupted run {self.redone_items}" if self.redone_items else ""),
        ]
        if self.failures:
            lines.append(f"failed {len(self.failures)} (not indexed):")
            lines += [f"  {p.path} [{p.stage}] {p.reason}" for p in self.failures[:20]]
            if len(self.failures) > 20:
                lines.append(f"  ... {len(self.failures) - 20} more in the run report (unite-search info --json)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} hidden or special file(s)")
        if self.ignored_files:
            lines.append(f"ignored {self.ignored_files} file(s) of other types")
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        lines.append(f"time: {times}")
        if self.error:
            lines.append(f"FAILED: {self.error}")
        return "\n".join(lines)


def default_index_dir(corpus: str | os.PathLike) -> Path:
    return Path(DEFAULT_HOME) / Path(os.path.abspath(corpus)).name


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------- read
def _read_all(
    entries: list[Entry], cache: dict[str, dict], options: IngestOptions, workers: int, progress: bool
) -> tuple[dict[str, FileFacts], list[Problem]]:
    """The read stage: cached facts for unchanged files, a fresh hash and probe for the rest."""
    from tqdm.auto import tqdm

    facts: dict[str, FileFacts] = {}
    todo: list[Entry] = []
    for entry in entries:
        row = cache.get(entry.rel)
        if row is not None and row["size"] == entry.size and row["mtime_ns"] == entry.mtime_ns:
            facts[entry.rel] = FileFacts.from_row(row, entry.path)
        else:
            todo.append(entry)

    def one(entry: Entry):
        try:
            return entry, read_file(entry, passage_chars=options.passage_chars)
        except InputError as exc:
            return entry, Problem(entry.rel, "read", exc.reason)
        except Exception as exc:  # noqa: BLE001  probing malformed media can raise anything; one file must not end the run
            return entry, Problem(entry.rel, "read", f"{type(exc).__name__}: {exc}")

    problems = []
    with tqdm(total=len(todo), unit="file", desc="read", disable=not progress or not todo) as bar:
        for entry, got in bounded_map(one, todo, workers, lookahead=4 * workers):
            if isinstance(got, Problem):
                problems.append(got)
            else:
                facts[entry.rel] = got
            bar.update(1)
    return facts, problems


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


def _captions(media: list[Entry], facts: dict[str, FileFacts]):
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
        try:
            with open(e.path, "rb") as fh:
                caption = decode_text(fh.read(), e.rel).strip()
        except OSError as exc:
            problems.append(Problem(e.rel, "read", f"cannot read caption: {exc.strerror or exc}"))
            continue
        except InputError as exc:
            problems.append(Problem(e.rel, "read", exc.reason))
            continue
        for rel in stems[stem]:
            captions[rel] = caption
    return captions, sidecars, problems


def _declared_items(manifests: list[Entry], facts, cache, root: str, options, workers: int):
    """Items of every ``*.jsonl`` manifest with the facts of the media they name."""
    failures: list[Problem] = []
    items: list[Declared] = []
    seen: dict[str, str] = {}
    for m in manifests:
        got, problems = parse_manifest(m)
        failures += problems
        for d in got:
            if d.id in seen:
                failures.append(Problem(d.source, "manifest", f"id {d.id!r} is already declared at {seen[d.id]}"))
            else:
                seen[d.id] = d.source
                items.append(d)
    by_path = {f.path: f for f in facts.values()}
    named = sorted({p for d in items for p in (d.image, d.video) if p is not None} - set(by_path))
    extra = [e for e in (_entry_for(p, root) for p in named) if e is not None]
    more, problems = _read_all(extra, cache, options, workers, progress=False)
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
    from .video import Probe, segment_spans

    common = {"path": paths[0], "paths": list(paths), "content_hash": f.sha256, "size": f.size}
    common.update(mtime=f.mtime_ns / 1e9, width=f.width, height=f.height, caption=caption, text=text)
    checks = ((f.path, f.size, f.mtime_ns),)
    item_text = {"text": text} if text is not None else {}
    source = "pair" if text is not None else "file"
    suffix = f"+{_sha(text)[:8]}" if text is not None else ""
    if f.modality == Modality.IMAGE.value:
        row = _base_row(unit, 1, shard, source, f.sha256[:16] + suffix, **common)
        return [Task(unit, shard, row, {"image": f.path, **item_text}, checks)]
    probe = Probe(int(f.total_frames or 0), float(f.fps or 0), f.width or 0, f.height or 0)
    spans = [(0.0, probe.duration)] if text is not None else segment_spans(probe.duration, *_seg(options))
    tasks = []
    for start, end in spans:
        whole = len(spans) == 1
        row_id = f.sha256[:16] + suffix + ("" if whole else f"@{start:g}-{end:g}")
        frames = _frames_used(probe, settings, None if whole else start, None if whole else end)
        row = _base_row(unit, len(spans), shard, source, row_id, duration=probe.duration, frames=frames, **common)
        row.update(start=start, end=end)
        tasks.append(Task(unit, shard, row, {"video": f.path, **item_text}, checks, None if whole else (start, end)))
    return tasks


def _seg(options: IngestOptions) -> tuple[float, float]:
    return options.segment_seconds, options.segment_overlap


def _frames_used(probe, settings, start, end) -> int:
    from .video import _wanted

    try:
        return len(_wanted(probe, settings, start, end))
    except InputError:
        return 0


def plan_units(
    facts: dict[str, FileFacts],
    captions: dict[str, str],
    sidecars: set[str],
    declared: list[tuple[Declared, dict[str, FileFacts]]],
    options: IngestOptions,
    settings,
) -> list[Unit]:
    """Work units for the corpus: file content grouped by hash, pairs, declared items."""
    by_content: dict[tuple[str, str], list[FileFacts]] = defaultdict(list)
    for f in facts.values():
        if f.rel in sidecars:  # captions are not items of their own
            continue
        if os.path.isabs(f.rel):  # outside the corpus: only there because a manifest names it
            continue
        by_content[(f.modality, f.sha256)].append(f)
    units: list[Unit] = []
    for (modality, sha), group in sorted(by_content.items()):
        group.sort(key=lambda g: g.rel)
        first, paths = group[0], tuple(g.rel for g in group)
        caption = next((captions[p] for p in paths if p in captions), None)
        key = f"{modality}/{sha}"
        if modality == Modality.TEXT.value:
            tasks = []
            for i, (a, b) in enumerate(first.passages):
                row_id = sha[:16] if len(first.passages) == 1 else f"{sha[:16]}#{i}"
                common = {"path": paths[0], "paths": list(paths), "content_hash": sha, "size": first.size}
                common.update(mtime=first.mtime_ns / 1e9, char_start=a, char_end=b, caption=caption)
                row = _base_row(key, len(first.passages), modality, "file", row_id, **common)
                checks = ((first.path, first.size, first.mtime_ns),)
                tasks.append(Task(key, modality, row, {}, checks, chars=(a, b), sha256=sha))
        else:
            tasks = _media_tasks(key, modality, first, paths, caption, options, settings)
        units.append(Unit(key, modality, tasks, paths, caption, paths[0]))
        if options.pairs == "composed" and caption is not None:
            shard = shard_name({Modality(modality), Modality.TEXT})
            pair_key = f"{shard}/{sha}/{_sha(caption)}"
            tasks = _media_tasks(pair_key, shard, first, paths, caption, options, settings, text=caption)
            units.append(Unit(pair_key, shard, tasks, paths, caption, paths[0]))
    for d, media in declared:
        modalities = {Modality.TEXT} if d.text is not None else set()
        parts: dict[str, Any] = {"text": d.text, "metadata": d.metadata}
        checks, row_cols = [], {}
        for kind in ("image", "video"):
            f = media.get(kind)
            if f is not None:
                modalities.add(Modality(kind))
                parts[kind] = f.sha256
                checks.append((f.path, f.size, f.mtime_ns))
                row_cols.update(width=f.width, height=f.height)
                if kind == "video":
                    from .video import Probe

                    probe = Probe(int(f.total_frames or 0), float(f.fps or 0), f.width or 0, f.height or 0)
                    row_cols.update(duration=probe.duration, frames=_frames_used(probe, settings, None, None))
                    row_cols.update(start=0.0, end=probe.duration)
        shard = shard_name(modalities)
        content = _sha(json.dumps(parts, sort_keys=True))
        key = f"{shard}/id:{d.id}/{content}"
        media_paths = [m.rel for m in media.values()]
        meta = json.dumps(d.metadata, sort_keys=True) if d.metadata is not None else None
        row = _base_row(key, 1, shard, d.source, d.id, path=media_paths[0] if media_paths else None)
        row.update(paths=media_paths, content_hash=content, text=d.text, metadata=meta, **row_cols)
        item = {"text": d.text, "image": d.image, "video": d.video}
        units.append(Unit(key, shard, [Task(key, shard, row, item, tuple(checks))], tuple(media_paths), None, d.source))
    return units


# -------------------------------------------------------------------------------------- decode
def _decode(encoder, task: Task):
    """Read, decode and preprocess one row's inputs (a worker thread): (text column, Prepared)."""
    for path, size, mtime_ns in task.checks:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise InputError("file disappeared during ingest", source=path) from None
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            raise InputError("file changed during ingest; run ingest again to pick up the new content", source=path)
    if task.chars is not None:
        path = task.checks[0][0]
        with open(path, "rb") as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != task.sha256:
            raise InputError("file changed during ingest; run ingest again", source=path)
        text = decode_text(data, path)[task.chars[0] : task.chars[1]]
        return text, encoder.prepare(Item(text=text))
    if task.span is not None:
        from .video import read_frames

        frames, _ = read_frames(task.item["video"], encoder.preprocessing, None, *task.span)
        return None, encoder.prepare(Item(video=frames, text=task.item.get("text")))
    return task.row.get("text"), encoder.prepare(Item(**{k: v for k, v in task.item.items() if v is not None}))


class _Writer:
    """Appends encoded rows on its own thread so that encoding does not wait on disk."""

    def __init__(self, store: IndexStore):
        self.store = store
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.busy = 0.0
        self.thread = threading.Thread(target=self._run, name="unite-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                t = time.perf_counter()
                for shard, (rows, vecs) in job.items():
                    self.store.add_rows(shard, rows, vecs)
                self.busy += time.perf_counter() - t
            except BaseException as exc:  # noqa: BLE001  handed to the main thread, which re-raises it
                self.error = exc

    def put(self, job) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _encode_all(
    encoder, store, tasks, units_by_key, *, workers, on_error, commit_rows, progress, timings, failed, prefetch_bytes
):
    """Decode -> encode -> write, overlapped. Returns rows written; fills ``failed`` (unit -> Problem)."""
    import numpy as np
    from tqdm.auto import tqdm

    from .batching import prefetch
    from .encoder import WINDOW_BYTES

    writer = _Writer(store)
    decode_busy = [0.0]
    lock = threading.Lock()

    def work(task: Task):
        t = time.perf_counter()
        try:
            out: Any = _decode(encoder, task)
        except InputError as exc:
            out = exc
        except Exception as exc:  # noqa: BLE001  decoders raise many classes on malformed media; one file must not end the run
            out = InputError(f"{type(exc).__name__}: {exc}")
        with lock:
            decode_busy[0] += time.perf_counter() - t
        return task, out

    window: list[tuple[Task, str | None, Any]] = []
    tokens = nbytes = 0
    written = 0
    encode_time = 0.0
    bar = tqdm(total=len(tasks), unit="item", desc="encode", disable=not progress or not tasks)

    def flush():
        nonlocal window, tokens, nbytes, written, encode_time
        live = [w for w in window if w[0].unit not in failed]
        if live:
            t = time.perf_counter()
            vecs = encoder.encode_prepared([p for _, _, p in live])
            encode_time += time.perf_counter() - t
            job: dict[str, tuple[list, list]] = {}
            for (task, text, _), vec in zip(live, vecs, strict=True):
                row = dict(task.row)
                if text is not None:
                    row["text"] = text
                rows, vs = job.setdefault(task.shard, ([], []))
                rows.append(row)
                vs.append(vec)
            writer.put({s: (rows, np.stack(vs)) for s, (rows, vs) in job.items()})
            written += len(live)
        window, tokens, nbytes = [], 0, 0

    def size_of(pair) -> int:
        return pair[1][1].nbytes if isinstance(pair[1], tuple) else 1024

    t0 = time.perf_counter()
    decoded = bounded_map(work, tasks, workers, lookahead=4 * max(1, workers))
    try:
        # decoding runs on while the encoder works: up to one window of inputs is made ready ahead
        for task, out in prefetch(decoded, prefetch_bytes, size_of):
            bar.update(1)
            if isinstance(out, InputError):
                if task.unit not in failed:
                    label = units_by_key[task.unit].label
                    failed[task.unit] = Problem(label, "decode", out.reason)
                    bar.set_postfix(failed=len(failed))
                if on_error == "raise":
                    break
                continue
            text, prepared = out
            window.append((task, text, prepared))
            tokens += prepared.length
            nbytes += prepared.nbytes
            if tokens >= 8 * encoder.token_budget or nbytes >= WINDOW_BYTES or len(window) >= commit_rows:
                flush()
        else:
            flush()
    finally:
        bar.close()
        writer.close()
    timings["decode"] = round(decode_busy[0], 3)
    timings["encode"] = round(encode_time, 3)
    timings["write"] = round(writer.busy, 3)
    timings["pipeline"] = round(time.perf_counter() - t0, 3)
    return written


# -------------------------------------------------------------------------------------- ingest
def ingest(
    corpus: str | os.PathLike,
    index: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    encoder=None,
    device: str = "auto",
    dtype: Any = "auto",
    settings=None,
    workers: int | None = None,
    segment_seconds: float = 30.0,
    segment_overlap: float | None = None,
    passage_chars: int = 2000,
    pairs: str = "none",
    on_error: str = "skip",
    flat_max: int = ann.FLAT_MAX,
    gpu: bool | str = "auto",
    commit_rows: int = COMMIT_ROWS,
    prefetch_bytes: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> IngestReport:
    """Index a folder of texts, images, videos and ``*.jsonl`` manifests into ``index``.

    Default ``index`` is ``indexes/<corpus folder name>``. Videos longer than ``segment_seconds``
    become overlapping segments (``segment_overlap``, default a sixth); text files become passages of
    at most ``passage_chars`` characters. Rerunning finishes an interrupted run,
    encodes only new or changed content and removes what left the corpus. ``on_error="skip"``
    records each bad input in the report and goes on; ``"raise"`` stops at the first one and
    publishes nothing. Pass ``encoder`` to reuse a loaded :class:`~unite_search.Encoder`.
    ``prefetch_bytes`` bounds the decoded inputs made ready while the encoder runs (default 1 GiB;
    0 decodes and encodes in turn).

    >>> report = ingest("photos/", model="unite-base-2b")   # doctest: +SKIP
    >>> print(report.summary())                              # doctest: +SKIP
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    overlap = segment_seconds / 6 if segment_overlap is None else segment_overlap  # 5 s of 30 s
    options = IngestOptions(segment_seconds, overlap, passage_chars, pairs)
    root = os.path.abspath(os.path.expanduser(corpus))
    if not os.path.isdir(root):
        raise InputError("corpus is not a folder", source=os.fspath(corpus))
    index_dir = Path(os.path.expanduser(index)) if index is not None else default_index_dir(root)
    store = IndexStore(index_dir)
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    with store.lock():
        if encoder is None:
            from .encoder import Encoder

            say("loading the encoder")
            encoder = Encoder.load(model, device=device, dtype=dtype, settings=settings, workers=workers)
        workers = workers or encoder.workers
        manifest = store.init(encoder.settings, options.to_dict(), root)
        report = IngestReport(str(index_dir), root, encoder.model_id)
        try:
            _run(report, store, manifest, encoder, root, index_dir, options, workers, on_error, flat_max, gpu,
                 commit_rows, prefetch_bytes, progress, say)  # fmt: skip
        except BaseException as exc:
            report.status = "failed"
            report.error = str(exc) if isinstance(exc, UniteError) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            report.timings["total"] = round(time.perf_counter() - t_start, 3)
            store.write_run(report.to_dict())
    return report


def _fail_fast(on_error: str, problems: list[Problem]) -> None:
    if on_error == "raise" and problems:
        p = problems[0]
        raise IngestError(f"{p.path} [{p.stage}]: {p.reason} (on_error='raise': nothing was published)", p)


def _run(report, store, manifest, encoder, root, index_dir, options, workers, on_error, flat_max, gpu,
         commit_rows, prefetch_bytes, progress, say) -> None:  # fmt: skip
    if prefetch_bytes is None:
        from .encoder import PREFETCH_BYTES

        prefetch_bytes = PREFETCH_BYTES
    timings = report.timings
    t = time.perf_counter()
    found = walk(root, exclude=(index_dir,))
    timings["discover"] = round(time.perf_counter() - t, 3)
    report.skipped, report.ignored_files = found.skipped, found.ignored
    failures: list[Problem] = list(found.failures)
    _fail_fast(on_error, failures)

    # read: hash and probe every file; captions; manifests and the media they name
    t = time.perf_counter()
    media = [e for e in found.entries if e.kind != "manifest"]
    cache = store.file_cache()
    facts, problems = _read_all(media, cache, options, workers, progress)
    failures += problems
    captions, sidecars, problems = _captions(media, facts)
    failures += problems
    declared, problems = _declared_items([e for e in found.entries if e.kind == "manifest"], facts, cache, root,
                                         options, workers)  # fmt: skip
    failures += problems
    timings["read"] = round(time.perf_counter() - t, 3)
    _fail_fast(on_error, failures)

    # plan: units by content, diffed against what the index holds
    units = plan_units(facts, captions, sidecars, declared, options, encoder.preprocessing)
    units = [u for u in units if u.tasks]
    report.items = len(units)
    by_key = {u.key: u for u in units}
    start_versions = store.versions()
    todo: list[Unit] = []
    remove: dict[str, set[str]] = defaultdict(set)
    relabel: dict[str, dict[str, tuple]] = defaultdict(dict)
    shards = {u.shard for u in units} | set(manifest.get("shards", {})) | set(store.shards_on_disk())
    for shard in sorted(shards):
        states = store.unit_states(shard)
        for key, state in states.items():
            unit = by_key.get(key)
            if unit is None:
                remove[shard].add(key)
                report.removed_items += 1
            elif state.rows != state.expected or state.expected != len(unit.tasks):
                remove[shard].add(key)  # cut short by a killed run: redo it whole
                report.redone_items += 1
                todo.append(unit)
            else:
                report.unchanged_items += 1
                if (state.paths, state.caption) != (unit.paths, unit.caption):
                    relabel[shard][key] = (unit.paths, unit.caption)
        todo += [u for u in units if u.shard == shard and u.key not in states]
    report.relabeled_items = sum(len(v) for v in relabel.values())
    say(f"{len(units)} items: {len(todo)} to encode, {report.removed_items} to remove")

    # write: removals first, then new rows as they are encoded
    failed: dict[str, Problem] = {}
    try:
        t = time.perf_counter()
        for shard, keys in remove.items():
            store.delete_units(shard, keys)
        edits = time.perf_counter() - t
        tasks = [task for unit in todo for task in unit.tasks]
        report.encoded_rows = _encode_all(
            encoder, store, tasks, by_key, workers=workers, on_error=on_error,
            commit_rows=commit_rows, progress=progress, timings=timings, failed=failed, prefetch_bytes=prefetch_bytes,
        )  # fmt: skip
        _fail_fast(on_error, list(failed.values()))
        t = time.perf_counter()
        failed_by_shard: dict[str, set[str]] = defaultdict(set)
        for key in failed:
            failed_by_shard[by_key[key].shard].add(key)
        for shard, keys in failed_by_shard.items():  # rows of a unit that failed half-way
            if shard in store.shards_on_disk():
                store.delete_units(shard, keys)
        for shard, changes in relabel.items():
            store.relabel(shard, changes)
        timings["write"] = round(timings["write"] + edits + time.perf_counter() - t, 3)
    except BaseException:
        if on_error == "raise":
            store.restore(start_versions)  # nothing half-way: tables back to where this run found them
        raise
    failures += list(failed.values())
    report.encoded_items = len({task.unit for task in tasks} - set(failed))
    report.failures = failures

    # publish: FAISS over every changed shard, then the manifest (the commit point for readers)
    t = time.perf_counter()
    store.save_file_cache([f.to_row() for f in facts.values()])
    changed = {s for s in shards if remove.get(s) or relabel.get(s)} | {u.shard for u in todo}
    changed |= {s for s in store.shards_on_disk() if s not in manifest.get("shards", {})}
    changed |= {s for s, e in manifest.get("shards", {}).items() if store.versions().get(s) != e.get("version")}
    if changed:
        say(f"indexing shard(s): {', '.join(sorted(changed))}")
        manifest = store.publish(manifest, sorted(changed), flat_max=flat_max, gpu=gpu)
        report.published = True
    timings["index"] = round(time.perf_counter() - t, 3)
    report.shards = {s: e["rows"] for s, e in manifest.get("shards", {}).items()}
    report.status = "skipped" if report.failures else "ok"
