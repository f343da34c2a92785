"""``ingest``: a folder in, a persistent modality-partitioned index out. Resumable and incremental.

Stages: discover (walk the folder) -> read (hash, sniff, probe; cached by size and mtime) -> plan
(work units by content, diffed against the index) -> decode (worker threads, bounded look-ahead)
-> encode (token-budget batches) -> write (a writer thread appends to LanceDB in batches) ->
publish (compact, build FAISS, replace the manifest).

Units (what becomes rows, and how each row's inputs are read) are in ``units.py``; the overlapped
decode -> encode -> write stage in ``pipeline.py`` (on Ray: ``distributed.py``).
"""

from __future__ import annotations

import itertools
import json
import numbers
import os
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import decoderlog, filecache
from . import manifest as manifests
from .corpus import Problem, walk
from .diskio import io_reason, remove_stale_temporaries, write_error, write_json
from .errors import (
    ConfigError,
    IngestCrashError,
    IngestError,
    InputError,
    ModelLoadError,
    UniteError,
)
from .manifest import MANIFEST
from .memory import MEMORY_BYTES
from .models import moved_folder
from .pipeline import encode_all, torch_threads
from .report import FAILED, INTERRUPTED, OK, WITH_FAILURES, IngestReport
from .rerun import WRITING, indexing_options, recorded_manifest, same_model, scan_stamp, unchanged
from .settings import EncoderSettings
from .store import IndexStore
from .units import (
    PASSAGE_CHARS_MAX,
    IngestOptions,
    declared_items,
    diff_units,
    find_captions,
    plan_units,
    read_files,
    without_clashing_ids,
)

DEFAULT_HOME = "indexes"
COMMIT_ROWS = 1024


def default_index_dir(corpus: str | os.PathLike) -> Path:
    return Path(DEFAULT_HOME) / Path(os.path.abspath(corpus)).name


# -------------------------------------------------------------------------------------- ingest
def ingest(
    corpus: str | os.PathLike,
    index: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    encoder=None,
    device: str = "auto",
    dtype: Any = "auto",
    settings=None,
    workers: int | None = None,
    torch_threads: int | None = None,
    segment_seconds: float | None = None,
    segment_overlap: float | None = None,
    passage_chars: int | None = None,
    pairs: str | None = None,
    on_error: str = "skip",
    flat_max: int | None = None,
    index_memory: int | None = None,
    gpu: bool | str = "auto",
    commit_rows: int = COMMIT_ROWS,
    memory_bytes: int = MEMORY_BYTES,
    allow_outside: bool | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_encoders: int | None = None,
) -> IngestReport:
    """Index a folder of texts, images, videos and ``*.jsonl`` manifests into ``index``.

    Default ``index`` is ``indexes/<corpus folder name>``. Videos longer than ``segment_seconds``
    (default 30) become overlapping segments (``segment_overlap``, default a sixth); text files become
    passages of at most ``passage_chars`` characters (default 2000); ``pairs="composed"`` also indexes
    a captioned image or video as one composed item. Into an existing index, the model, adapter,
    preprocessing ``settings``, these four, ``flat_max``, ``index_memory`` and ``allow_outside`` default to
    the ones it records (an ``encoder`` given brings its own model and settings); ``flat_max`` or
    ``index_memory`` changed picks each shard's index kind again. Rerunning finishes an interrupted run,
    encodes only new or changed content and removes what left the corpus. ``on_error="skip"``
    records each bad input in the report and goes on; ``"raise"`` stops at the first one and
    publishes nothing. Pass ``encoder`` to reuse a loaded :class:`~unite_search.Encoder`, or ``adapter``
    (a LoRA folder from ``unite-search finetune``) to encode with ``model`` + adapter. While rows are
    encoded, decoding uses ``workers`` threads (default: the cores, at most 8) and torch
    ``torch_threads`` (default: torch's own setting; set back afterwards). Splitting the cores between
    them was measured slower than letting both use all of them (``benchmarks/RESULTS.md``).
    ``memory_bytes`` (default 2 GiB) bounds the inputs decoded or prepared and not yet encoded:
    decoding is admitted by each input's predicted peak, known from the read stage (image size,
    video frame size and count); one input larger than the budget is decoded alone. Only files
    under ``corpus`` are read (symlinks resolved; a manifest's media paths too) unless
    ``allow_outside=True``. Each shard's FAISS index is exact up to ``flat_max`` rows (default 100,000), else the
    first IVF kind that fits ``index_memory`` bytes (default: half this machine's RAM): IVF-Flat, then
    SQ8, SQ4 or PQ codes re-ranked exactly from the table (``indexes/README.md``).

    Given ``encoder``, a ``model``, ``adapter``, ``device``, ``dtype`` or ``settings`` that differ from
    its own raise :class:`~unite_search.ConfigError`. A file's decode or I/O error fails that file; a
    bug or ``MemoryError`` stops the run with :class:`~unite_search.IngestCrashError`, the traceback
    kept in the run log. Ctrl-C (``KeyboardInterrupt``) is recorded as ``interrupted`` and raised again;
    what was written is kept, and the same call continues.

    ``engine="ray"`` runs decode, encode and write on a Ray cluster (``ray_address``: ``"auto"`` or
    None joins the one this machine runs, or starts a local one; else ``host:port`` or ``ray://...``):
    one encoder actor per GPU, or ``ray_encoders`` CPU actors (default 1) where there is none. The rest
    (discovery, read, plan, publish) is the same, and so are the rows (``unite_search.distributed``).

    >>> report = ingest("photos/", model="unite-base-2b")   # doctest: +SKIP
    >>> print(report.summary())                              # doctest: +SKIP
    """
    if on_error not in ("skip", "raise"):
        raise ConfigError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine must be 'local' or 'ray', not {engine!r}")
    if engine == "ray":
        from .distributed import check_address, ray_module

        ray_module()  # not installed, or a cluster that cannot be reached: said before anything is read
        check_address(ray_address)
    if ray_encoders is not None and ray_encoders < 1:
        raise ConfigError("ray_encoders must be at least 1")
    if memory_bytes < 1:
        raise ConfigError("memory_bytes must be positive")
    root = os.path.abspath(os.path.expanduser(corpus))
    if not os.path.isdir(root):
        raise InputError(_not_a_folder(root), source=os.fspath(corpus))
    index_dir = Path(os.path.expanduser(index)) if index is not None else default_index_dir(root)
    if os.path.realpath(index_dir) == os.path.realpath(root):  # its tables and thumbnails would be indexed
        raise ConfigError(f"the index folder cannot be the corpus folder itself ({root}); pass another --index")
    # what is not given is the index's own: a rerun needs no option repeated (and fetches no other model)
    recorded = recorded_manifest(index_dir)
    own, done = recorded.get("encoder") or {}, recorded.get("ingest") or {}
    if encoder is None and own.get("model_id"):
        same = model is None or same_model(model, own["model_id"])
        if (gone := moved_folder(index_dir, own, model=model is None, adapter=adapter is None and same)) is not None:
            raise gone  # the index's own model or adapter folder moved: say so, and how to point at it
        model = own["model_id"] if model is None else model
        if adapter is None and same:  # the index's model, so its adapter too
            adapter = own.get("adapter")
    if encoder is None and settings is None and own:
        settings = EncoderSettings.from_record(own)
    if segment_overlap is None and segment_seconds in (None, done.get("segment_seconds")):  # the index's own
        segment_overlap = done.get("segment_overlap")
    segment_seconds = done.get("segment_seconds", 30.0) if segment_seconds is None else segment_seconds
    if isinstance(passage_chars, numbers.Real) and passage_chars > PASSAGE_CHARS_MAX:  # the caller's, not the index's
        raise ConfigError(f"passage_chars must be 16 to {PASSAGE_CHARS_MAX:,}, not {passage_chars:,}")
    passage_chars = done.get("passage_chars", 2000) if passage_chars is None else passage_chars
    pairs = done.get("pairs", "none") if pairs is None else pairs
    options = IngestOptions(segment_seconds, segment_overlap, passage_chars, pairs)
    indexing = indexing_options(recorded, flat_max, index_memory, allow_outside)
    flat_max, index_memory, allow_outside = indexing["flat_max"], indexing["index_memory"], indexing["allow_outside"]
    say = log or (lambda _msg: None)
    if encoder is not None:
        _check_encoder_arguments(encoder, model=model, adapter=adapter, device=device, dtype=dtype, settings=settings)
    elif not (index_dir / MANIFEST).exists():
        from .runtime import resolve_options

        resolve_options(device, dtype)  # a device this machine lacks is told before the index folder is made
    if any(n is not None and n < 1 for n in (workers, torch_threads)):
        raise ConfigError("workers and torch_threads must be at least 1")
    slot = _EncoderSlot(encoder, model, adapter, device, dtype, settings, workers, say)  # no weights loaded yet
    store = IndexStore(index_dir)
    t_start = time.perf_counter()
    with store.lock():
        remove_stale_temporaries(index_dir)  # a killed run's half-written manifest
        report = IngestReport(str(index_dir), root, slot.model_id)
        error: BaseException | None = None
        try:
            found = None
            if not allow_outside:
                t = time.perf_counter()
                found = walk(root, exclude=(index_dir,), allow_outside=False)
                report.timings["discover"] = round(time.perf_counter() - t, 3)
                if unchanged(report, store, slot.settings, options, root, found, indexing):
                    report.timings["total"] = round(time.perf_counter() - t_start, 3)
                    _write_run_log(store, report, index_dir, say)
                    return report
            manifest = store.init(slot.settings, options.to_dict(), root)
            with decoderlog.collecting() as messages:  # FFmpeg's complaints: into the run log, not the terminal
                try:
                    on_ray = encoder.dtype if encoder is not None else dtype
                    ray = (ray_address, ray_encoders, on_ray) if engine == "ray" else None
                    _run(report, store, manifest, slot, root, index_dir, options, (workers, torch_threads),
                         on_error, indexing, gpu, commit_rows, memory_bytes, progress, say, found, ray)  # fmt: skip
                finally:
                    report.decoder_messages = list(messages)
                    if "unite_search.video" in sys.modules:  # the decord readers kept for a clip's next segment
                        sys.modules["unite_search.video"].release_readers()
        except BaseException as exc:  # noqa: BLE001  recorded in the run report, then raised again below
            error = write_error(exc, index_dir) or exc
            report.status = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
            if isinstance(exc, KeyboardInterrupt):
                report.error = "interrupted (Ctrl-C); run the same ingest again to continue"
            else:
                report.error = str(error) if isinstance(error, UniteError) else _one_line(error)
            if _is_crash(error):
                report.traceback = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                report.error += " (it stopped the run; the traceback is in this run log: unite-search info --json)"
        report.timings["load"] = round(slot.load_seconds, 3)
        report.timings["total"] = round(time.perf_counter() - t_start, 3)
        run_log = _write_run_log(store, report, index_dir, say)
        if error is not None:
            if _is_crash(error) and run_log is not None:
                raise IngestCrashError(_crash_message(error, run_log), run_log=str(run_log)) from error
            raise error
    return report


def index_settings(corpus: str | os.PathLike, index: str | os.PathLike | None = None) -> EncoderSettings | None:
    """The preprocessing settings the index of ``corpus`` (at ``index``, or its default folder) records, or
    None for a new one: what a rerun's options change (the command line builds its settings on them)."""
    root = os.path.abspath(os.path.expanduser(corpus))
    index_dir = Path(os.path.expanduser(index)) if index is not None else default_index_dir(root)
    if os.path.realpath(index_dir) == os.path.realpath(root):  # its tables and thumbnails would be indexed
        raise ConfigError(f"the index folder cannot be the corpus folder itself ({root}); pass another --index")
    own = recorded_manifest(index_dir).get("encoder")
    return EncoderSettings.from_record(own) if own else None


def _write_run_log(store: IndexStore, report: IngestReport, index_dir: Path, say) -> Path | None:
    try:
        return store.write_run(report.to_dict())
    except Exception as exc:
        reason = io_reason(exc)
        if reason is None:
            raise
        # the run's own outcome (published or not) stands; only its log is lost
        say(f"could not write the run report into {index_dir / 'runs'}: {reason}")
        return None


class _EncoderSlot:
    """The encoder of one ingest: the one given, or one made only when a row needs encoding.

    Until then everything an index is checked and planned against comes from :func:`describe` (the
    model's config and fingerprint: no torch, no weights). Made, it has its tokenizer (``setup_seconds``);
    its weights load on a thread of their own once an input has decoded (see ``encode_all``), so a run
    whose every input fails never reads them.
    """

    def __init__(self, encoder, model, adapter, device, dtype, settings, workers, say):
        from .encoder import EncoderSettings, describe

        self._encoder = encoder
        self._load_args = {"adapter": adapter, "device": device, "dtype": dtype, "settings": settings,
                           "workers": workers}  # fmt: skip
        self._model = model
        self._say = say
        self.settings = encoder.settings if encoder is not None else describe(model, adapter=adapter, settings=settings)
        self.preprocessing = encoder.preprocessing if encoder is not None else (settings or EncoderSettings())
        self.model_id = self.settings["model_id"]
        self._made = False
        self.setup_seconds = 0.0

    def get(self):
        """The encoder, made now if it was not (its weights not loaded yet)."""
        if self._encoder is None:
            t = time.perf_counter()
            from .encoder import Encoder

            self._say("loading the encoder")
            encoder = Encoder.load(self._model, lazy=True, **self._load_args)
            if encoder.settings != self.settings:  # the model or adapter folder changed during this run
                raise ModelLoadError(
                    f"the model changed while ingesting: it was {self.settings['revision']}, it is now "
                    f"{encoder.settings['revision']}; run ingest again"
                )
            self._encoder, self._made = encoder, True
            self.setup_seconds = time.perf_counter() - t
        return self._encoder

    @property
    def load_seconds(self) -> float:
        return self._encoder.load_seconds if self._made else 0.0


def _not_a_folder(path: str) -> str:
    if os.path.isfile(path):
        return (
            "is a file, and ingest takes a folder. To index this one file, put it in a folder of its own "
            "and ingest that folder (or get its vector with `unite-search embed`)"
        )
    if os.path.exists(path):
        return "corpus is not a folder"
    return "corpus is not a folder: no such file or folder"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_crash(exc: BaseException) -> bool:
    """An error that is nobody's input: a bug, or running out of memory (not Ctrl-C, not one of ours)."""
    return isinstance(exc, Exception) and not isinstance(exc, UniteError)


def _crash_message(exc: BaseException, run_log: Path) -> str:
    if isinstance(exc, MemoryError):
        return (
            f"ingest ran out of memory ({_one_line(exc)}); the traceback is in {run_log}. Rows already written "
            "are kept: lower --memory-mb or --workers and run the same command again to continue."
        )
    return (
        f"ingest stopped on an internal error ({_one_line(exc)}), a bug in unite-search; the traceback is in "
        f"{run_log}. Rows already written are kept: run the same command again to continue."
    )


def _model_name(model) -> str:
    """The ``model_id`` an encoder loaded from ``model`` has, found without loading or downloading it."""
    from .models import ALIASES

    name = os.fspath(model)
    if os.path.isdir(name):
        return str(Path(name).resolve())
    return ALIASES.get(name.lower(), name)


def _check_encoder_arguments(encoder, *, model, adapter, device, dtype, settings) -> None:
    """``ingest(encoder=...)`` uses that encoder: a model, adapter, device, dtype or settings that say
    otherwise are a mistake, not a choice to make silently."""
    conflicts = []
    if model is not None and _model_name(model) != encoder.model_id:
        conflicts.append(f"model {os.fspath(model)!r} (the encoder's is {encoder.model_id!r})")
    if adapter is not None and str(Path(adapter).resolve()) != encoder.adapter:
        conflicts.append(f"adapter {os.fspath(adapter)!r} (the encoder's is {encoder.adapter!r})")
    if device not in (None, "auto"):
        from .runtime import resolve_options

        want, have = resolve_options(device)[0], encoder.device
        if want.type != have.type or (want.index is not None and want.index != (have.index or 0)):
            conflicts.append(f"device {str(device)!r} (the encoder is on {str(have)!r})")
    if dtype not in (None, "auto"):
        from .runtime import resolve_dtype

        if resolve_dtype(dtype, encoder.device) != encoder.dtype:
            conflicts.append(f"dtype {str(dtype)!r} (the encoder's is {str(encoder.dtype).removeprefix('torch.')!r})")
    if settings is not None and settings != encoder.preprocessing:
        conflicts.append("settings that differ from the encoder's (encoder.preprocessing)")
    if conflicts:
        raise ConfigError(
            "ingest was given an encoder and also " + "; ".join(conflicts) + ". Leave them out (the encoder's "
            "own are used), or load an encoder with them: Encoder.load(model, device=..., dtype=..., settings=...)"
        )


def _mark_writing(index_dir: Path, store: IndexStore, remove) -> dict[str, list[int]] | None:
    """Write the marker that stays until this run has published, with the keys of the rows this run
    deletes. One may be written again under the same key (a ``*.jsonl`` item whose content changed keeps
    its id) while the published FAISS index holds its old vector, which the publish must drop although
    the key is in the table before and after; for keys deleted for good it does nothing. A marker left
    by a run that stopped before it published adds its keys. Returns them by shard, or None where a
    marker of an older version does not say them: then the changed shards are indexed anew."""
    path = index_dir / WRITING
    replaced: dict[str, set[int]] | None = {}
    if path.exists():  # a run stopped before it published: what it wrote and never committed goes now
        store.tables.remove_unreferenced()
        try:
            earlier = json.loads(path.read_text() or "{}")["replaced"]
            replaced = {str(s): {int(k) for k in keys} for s, keys in earlier.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):  # an older version's, or damaged
            replaced = None
    if replaced is not None:
        # every key this run deletes, not only those it writes again now: if it stops before it publishes,
        # a later run may write one again (a manifest line removed, then put back with other content)
        for shard, units in remove.items():
            gone = store.tables.unit_keys(shard, units).tolist() if units else []
            if gone:
                replaced[shard] = replaced.get(shard, set()) | set(gone)
    out = None if replaced is None else {s: sorted(k) for s, k in sorted(replaced.items())}
    write_json(path, {"replaced": out})
    return out


def _fail_fast(on_error: str, problems: list[Problem]) -> None:
    if on_error == "raise" and problems:
        p = problems[0]
        raise IngestError(f"{p.path} [{p.stage}]: {p.reason} (on_error='raise': nothing was published)", p)


def _run(report, store, manifest, slot, root, index_dir, options, asked, on_error, indexing, gpu,
         commit_rows, memory_bytes, progress, say, found=None, ray=None) -> None:  # fmt: skip
    from .encoder import default_workers

    timings = report.timings
    allow_outside = indexing["allow_outside"]
    workers = asked[0] or default_workers()  # the read stage: hashing and probing files
    if found is None:
        t = time.perf_counter()
        found = walk(root, exclude=(index_dir,), allow_outside=allow_outside)
        timings["discover"] = round(time.perf_counter() - t, 3)
    report.skipped, report.ignored_files = found.skipped, found.ignored
    failures: list[Problem] = list(found.failures)
    if "." in found.unseen:  # not an empty corpus: one that cannot be read, whose rows would all be removed
        why = next(p.reason for p in failures if p.path == ".")
        raise IngestError(f"the corpus folder {root}: {why}; nothing was changed", failures[0])
    _fail_fast(on_error, failures)

    # read: hash and probe every file; captions; manifests and the media they name
    t = time.perf_counter()
    media = [e for e in found.entries if e.kind != "manifest"]
    cache = filecache.load(store.tables)
    facts, problems = read_files(media, cache, options, workers, progress)
    failures += problems
    captions, sidecars, problems = find_captions(media, facts)
    failures += problems
    walked = len(facts)  # facts of the walked files; a manifest's media come after them (only as its lines say)
    declared, problems = declared_items([e for e in found.entries if e.kind == "manifest"], facts, cache, root,
                                         options, workers, allow_outside)  # fmt: skip
    failures += problems
    timings["read"] = round(time.perf_counter() - t, 3)
    _fail_fast(on_error, failures)

    # plan: units by content, diffed against what the index holds
    named_only = set(itertools.islice(facts, walked, None))  # media only a manifest names (hidden, say)
    units = plan_units(facts, captions, sidecars, declared, options, slot.preprocessing, named_only)
    units, problems = without_clashing_ids([u for u in units if u.rows])
    failures += problems
    _fail_fast(on_error, failures)
    # a file or manifest line that failed before it was planned is an item too: the summary's counts add up
    report.items = len(units) + sum(p.stage in ("read", "manifest") for p in failures)
    start_versions = store.tables.versions()
    shards = {u.shard for u in units} | set(manifest.get("shards", {})) | set(store.tables.shards())
    diff = diff_units(units, store.tables, shards, found.unseen)
    todo, remove, relabel = diff.todo, diff.remove, diff.relabel
    report.unchanged_items, report.removed_items, report.redone_items = diff.unchanged, diff.removed, diff.redone
    report.items += diff.kept
    report.relabeled_items = sum(len(v) for v in relabel.values())
    rows = sum(u.rows for u in todo)
    say(f"{len(units)} items: {len(todo)} to encode ({rows} rows), {report.removed_items} to remove")
    del units  # only those to encode are kept (by_key): the others' memory goes before the model's comes
    by_key = {u.key: u for u in todo}
    facts = cache.let_go(facts, {path for u in todo for task in u.tasks for path, _, _ in task.checks})

    # write: removals first, then new rows as they are encoded. Until this run has published, the tables
    # may hold rows no manifest names: the marker says so, and the next run then does a full pass.
    failed: dict[str, Problem] = {}
    replaced = _mark_writing(index_dir, store, remove)
    try:
        t = time.perf_counter()
        for shard, keys in remove.items():
            store.tables.delete_units(shard, keys)
        edits = time.perf_counter() - t
        tasks = [task for unit in todo for task in unit.tasks]
        if tasks and ray is not None:  # decode, encode and write on the Ray cluster; the model loads there
            from .distributed import encode_on_ray

            address, encoders, dtype = ray
            say(f"encoding {len(tasks)} rows on Ray ({address or 'auto'})")
            report.encoded_rows = encode_on_ray(
                slot, store, tasks, by_key, address=address, encoders=encoders, dtype=dtype, on_error=on_error,
                commit_rows=commit_rows, progress=progress, timings=timings, failed=failed,
            )  # fmt: skip
            report.threads = {"ray_encoders": int(timings.pop("encoders")),
                              "ray_encoders_busy": int(timings.pop("encoders_busy", 0))}  # fmt: skip
        elif tasks:  # only now is the encoder made: a run with nothing to encode never loads the model
            import torch

            encoder = slot.get()
            timings["setup"] = round(slot.setup_seconds, 3)
            decoders = asked[0] or default_workers()
            report.threads = {"torch": asked[1] or torch.get_num_threads(), "decode": decoders}
            with torch_threads(asked[1]):
                report.encoded_rows, report.memory_peak = encode_all(
                    encoder, store, tasks, by_key, workers=decoders, on_error=on_error, commit_rows=commit_rows,
                    progress=progress, timings=timings, failed=failed, memory_bytes=memory_bytes,
                )  # fmt: skip
        else:
            timings.update(decode=0.0, encode=0.0, write=0.0, pipeline=0.0)
        _fail_fast(on_error, list(failed.values()))
        report.encoded_rows = sum(1 for task in tasks if task.unit not in failed)  # the rows kept, either engine
        t = time.perf_counter()
        failed_by_shard: dict[str, set[str]] = defaultdict(set)
        for key in failed:
            failed_by_shard[by_key[key].shard].add(key)
        for shard, keys in failed_by_shard.items():  # rows of a unit that failed half-way (none: no write)
            store.tables.delete_units(shard, keys)
        for shard, changes in relabel.items():
            store.tables.relabel(shard, changes)
        timings["write"] = round(timings["write"] + edits + time.perf_counter() - t, 3)
    except BaseException:
        if on_error == "raise":
            store.tables.restore(start_versions)  # nothing half-way: tables back to where this run found them
        raise
    failures += list(failed.values())
    report.encoded_items = len({task.unit for task in tasks} - set(failed))
    report.failures = failures

    # publish: FAISS over every changed shard, then the manifest (the commit point for readers). A clean
    # run records what it walked, so that the next run over the same files can stop right after its walk.
    t = time.perf_counter()
    # (a file the walk does not see, named by a manifest, could change unseen by the stamp: no quick rerun then)
    quick = not failures and not allow_outside and not named_only
    scan = {"stamp": scan_stamp(found), "items": report.items} if quick else None
    if manifest.get("scan") != scan:
        manifest = {**manifest, "scan": scan}
        stamp_changed = True
    else:
        stamp_changed = False
    # files of items that failed to decode are read again next time: the failure may be a change the
    # read stage's size and mtime did not show, and cached facts would be trusted on every later run
    unread = {path for key in failed for task in by_key[key].tasks for path, _, _ in task.checks}
    filecache.save(store.tables, cache, (f for f in facts.values() if f.path not in unread))
    # every write (rows added, deleted or relabelled, here or by a killed run) moves a table's version
    published = manifest.get("shards", {})
    changed = {s for s, v in store.tables.versions().items() if published.get(s, {}).get("version") != v}
    repair = {s: why for s, why in store.needs_repair(manifest).items() if s not in changed}
    for shard, why in sorted(repair.items()):
        say(f"rebuilding the FAISS index of shard {shard}: {why}")
    changed |= set(repair)
    report.repaired = sorted(repair)
    kinds = ("flat_max", "index_memory")
    before = indexing_options(manifest)
    if any(before[k] != indexing[k] for k in kinds) and set(published) - changed:
        said = ", ".join(f"{k} {before[k]} -> {indexing[k]}" for k in kinds if before[k] != indexing[k])
        say(f"choosing the index kind of every shard again ({said})")
        changed |= set(published)
    recorded = manifest.get("indexing") != indexing
    manifest = {**manifest, "indexing": indexing}
    if changed:
        say(f"indexing shard(s): {', '.join(sorted(changed))}")
        how = {"replaced": replaced} if replaced is not None else {"incremental": False}
        flat_max, memory = indexing["flat_max"], indexing["index_memory"]
        manifest = store.publish(manifest, sorted(changed), flat_max=flat_max, memory=memory, gpu=gpu, **how)
        report.published = True
    elif recorded or stamp_changed or manifest["encoder"] != (store.read_manifest() or {}).get("encoder"):
        manifests.write(index_dir, manifest)  # the same published state: what this run walked, where the weights are
    (index_dir / WRITING).unlink(missing_ok=True)
    timings["index"] = round(time.perf_counter() - t, 3)
    report.shards = {s: e["rows"] for s, e in manifest.get("shards", {}).items()}
    report.status = WITH_FAILURES if report.failures else OK
