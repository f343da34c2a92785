"""Readers: one shard exactly as one published manifest names it.

A :class:`ShardReader` is pinned to a manifest entry: its table version, its FAISS file (checked
against the recorded size and sha256 before use) and the rows of that version. It never re-reads
``manifest.json``, so it cannot pair a new FAISS file with an old table. A :class:`Snapshot` holds
the readers of every shard of one manifest; :meth:`unite_search.Index.refresh` swaps snapshots whole.

A reader of a shard up to :data:`MEMORY_ROWS` rows holds its small columns in memory after the first
search, as the record batches LanceDB read (:mod:`unite_search.held`: about 350 bytes a row; a load adds
450-510 MB of RSS at 1M rows), and fetches the columns of unbounded size (``text``, ``caption``,
``metadata``) for the hits that may have them. Of a larger shard it holds only a key -> row offset map
(12 bytes a row) and a bounded cache of recent hits (:data:`ROW_CACHE` rows), and fetches its hits' rows
from the pinned table by row offset through the Lance dataset, without the columns that hold one value
in every row (10 rows at 10M rows: 2.9-3.3 ms p50, 3.9-4.6 ms p95): its memory is the ANN index plus the
map and the cache.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as manifests
from .diskio import brief
from .errors import IndexDamagedError, StaleReadError
from .held import HeldRows, large_rows
from .schema import LARGE_COLUMNS, ROW_COLUMNS, SMALL_COLUMNS
from .tables import READ_BATCH, ShardTables

REPAIR = "run `unite-search ingest` on the corpus again to rebuild it"
POST_FILTER_MAX = 64  # ids left out of a search by dropping them from a longer top k; more: a FAISS selector


_NONE = np.empty(0, np.int64)
MMAP_MIN_BYTES = 8 << 30  # IVF files this large are mapped by readers rather than read into memory
ROW_CACHE = 4096  # rows a shard reader keeps after fetching them for hits (least recently used go first)
FILTER_CACHE = 8  # where filters whose matching keys and selectors a shard reader keeps (least recently used go)
FILTER_CACHE_KEYS = 4_000_000  # ... holding this many keys at most, all together (a broad filter's ~100 MB)
MEMORY_ROWS = 1_000_000  # shards up to this many rows hold their small columns in memory (~350 bytes a row)
# Columns a larger shard's reader checks for one value throughout (modality always; source, unit_rows, a
# video's frames, an image shard's nulls often): those are not fetched. Lance reads a point of a
# constant column ~8x slower than of a varied one (4.5 ms against 0.5 ms for 10 rows of a 1M-row page).
MAYBE_SAME = (
    "unit_rows",
    "modality",
    "source",
    "size",
    "mtime",
    "width",
    "height",
    "duration",
    "frames",
    "start",
    "end",
    "char_start",
    "char_end",
    "caption",
    "metadata",
)


@dataclass(frozen=True)
class _Meta:
    sorted_keys: np.ndarray  # (n,) int64
    order: np.ndarray  # (n,) int32 or int64: the row offset of each sorted key
    table: HeldRows | None = None  # SMALL_COLUMNS of every row, for a shard of at most MEMORY_ROWS rows
    large: np.ndarray | None = None  # (n,) bool with ``table``: fetch the row's ``fetch`` columns
    fetch: tuple[str, ...] = ()  # with ``table``: the large columns some row fills (the rest are null throughout)
    same: dict[str, Any] | None = None  # without ``table``: columns of one value in every row, and that value


class Matching:
    """The keys a ``where`` filter matches in one pinned shard (sorted), with the FAISS selectors over them,
    each made once: a filtered query scanned the table, sorted its keys and built a selector every time
    (200-270 ms at 100k rows)."""

    def __init__(self, keys: np.ndarray):
        self.keys = np.unique(keys)
        self._made: dict[bool, tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def selector(self, removed: np.ndarray) -> tuple[Any, int]:
        """(selector, how many keys it lets through) for an index whose ``removed`` ids are skipped."""
        with self._lock:
            made = self._made.get(bool(len(removed)))
            if made is None:
                keys = self.keys[~np.isin(self.keys, removed)] if len(removed) else self.keys
                made = self._made[bool(len(removed))] = (faiss_module().IDSelectorBatch(keys), int(keys.size))
            return made


class ShardReader:
    """One published shard: table version, FAISS index and row metadata, loaded on first use."""

    def __init__(
        self, folder: Path, tables: ShardTables, name: str, entry: dict[str, Any], serial: int, gpu_search=False
    ):
        self.folder = folder
        self.tables = tables
        self.name = name
        self.entry = entry
        self.serial = serial  # which publish of the index this entry belongs to
        self._lock = threading.RLock()  # lazy loads happen once, whichever thread asks first
        self._table = None
        self._dataset: Any = None  # the pinned version as a Lance dataset (pylance), False without one
        self._index = None
        self._meta: _Meta | None = None
        self._rows: OrderedDict[int, dict[str, Any]] = OrderedDict()  # recent hits' rows, ROW_CACHE at most
        self._filters: OrderedDict[str, Matching] = OrderedDict()  # recent where filters, FILTER_CACHE at most
        self._direct_map = False  # the FAISS index can reconstruct a vector by key
        self._delta = None  # after a delta publish: the rows added since the base FAISS file
        self._delta_keys = _NONE  # ... their keys
        self._removed = _NONE  # ... and the sorted ids removed since
        self._dead = None  # a FAISS selector that skips the removed ids
        self._gpu_search = gpu_search  # search a GPU copy of the base index where it fits (ann.gpu_copy)
        self._gpu = None  # that copy, without the removed ids, made on the first search
        self._gpu_lock = threading.Lock()  # FAISS's GPU indexes are not thread-safe, even to search
        self.gpu_state = "not asked" if not gpu_search else "not loaded yet"  # made, or why not

    @property
    def rows(self) -> int:
        return int(self.entry["rows"])

    # ------------------------------------------------------------------ loads
    def _missing(self, what: str, exc: BaseException | None = None) -> Exception:
        """Stale when a newer manifest replaced ours and pruned this state; damaged when ours is current."""
        try:
            current = manifests.read(self.folder)
        except Exception:  # noqa: BLE001  an unreadable manifest makes this a damaged index, said below
            current = None
        if current is not None and current.get("serial", 0) != self.serial:
            return StaleReadError(
                f"{self.folder}: {what} of shard {self.name!r} was removed by a later update of the index; "
                "call Index.refresh() (or reopen the index) to read the current state"
            )
        detail = f" ({brief(exc)})" if exc is not None else ""
        return IndexDamagedError(f"{self.folder}: {what} of shard {self.name!r} is missing or unreadable{detail}; "
                                 f"{REPAIR}")  # fmt: skip

    def table(self):
        with self._lock:
            if self._table is None:
                version = self.entry["version"]
                try:
                    self._table = self.tables.open(self.name, version)
                except Exception as exc:  # noqa: BLE001  LanceDB raises ValueError, RuntimeError or OSError here
                    raise self._missing(f"table version {version}", exc) from None
            return self._table

    def index(self):
        """The FAISS index, after checking the file against the manifest (size, sha256, rows, dim)."""
        with self._lock:
            if self._index is None:
                self._index = self._load_index()
            return self._index

    def _load_index(self):
        from . import ann
        from .publish import read_ids

        try:  # files named outside the index's faiss/ folder are damage, never opened
            paths = {rel: manifests.faiss_path(self.folder, rel) for rel in manifests.files_of(self.entry)}
        except IndexDamagedError as exc:
            raise IndexDamagedError(f"{exc}; {REPAIR}") from None
        for rel, one in paths.items():
            if "faiss_sha256" in self.entry and not one.is_file():
                raise self._missing(rel)  # pruned after a later publish, or deleted
        problem = manifests.faiss_problem(self.folder, self.entry)
        if problem is not None:
            raise IndexDamagedError(f"{self.folder}: {problem}; {REPAIR}")
        path = paths[self.entry["faiss"]]
        # a large IVF file is mapped, not copied (never rewritten: each version has its own); searches then
        # pay a page fault on each page's first touch, so files that fit easily are read into memory
        mapped = self.entry.get("index", {}).get("type") == "ivf" and self.entry.get("faiss_bytes", 0) >= MMAP_MIN_BYTES
        try:
            index = ann.read(path, mmap=mapped)
            if "delta" in self.entry:
                self._delta = ann.read(paths[self.entry["delta"]["faiss"]])
                self._delta_keys = ann.ids(self._delta)
            if "removed" in self.entry:
                self._removed = np.sort(read_ids(paths[self.entry["removed"]["faiss"]]))
        except (RuntimeError, ValueError) as exc:
            raise IndexDamagedError(f"{path}: unreadable FAISS file ({brief(exc)}); {REPAIR}") from None
        dim = self.entry.get("dim")
        base_rows = int(self.entry.get("base_rows", self.rows))
        added = self._delta.ntotal if self._delta is not None else 0
        if (
            index.ntotal != base_rows
            or index.ntotal - len(self._removed) + added != self.rows
            or (dim is not None and index.d != dim)
        ):
            raise IndexDamagedError(
                f"{path}: holds {index.ntotal} vectors of dim {index.d} (+{added} -{len(self._removed)} since), "
                f"the manifest says {self.rows} of {dim}; {REPAIR}"
            )
        if len(self._removed):
            inner = faiss_module().IDSelectorBatch(self._removed)
            self._dead = faiss_module().IDSelectorNot(inner)
            self._dead.inner = inner  # keep the wrapped selector alive as long as the outer one
        return index

    def meta(self) -> _Meta:
        with self._lock:
            if self._meta is None:
                self._meta = self._load_meta()
            return self._meta

    def _load_meta(self) -> _Meta:
        held = self.rows <= MEMORY_ROWS
        columns = list(SMALL_COLUMNS)
        same: dict[str, Any] = {}
        try:
            if not held:  # the columns of one value in a first batch; then only they are checked in all rows
                first = self.table().search().select(list(MAYBE_SAME)).limit(READ_BATCH).to_arrow()
                same = _one_value(first, {c: None for c in MAYBE_SAME}, first=True)
                columns = ["key", *same]
            batches = []
            for batch in self.table().search().select(columns).limit(None).to_batches(READ_BATCH):
                if not held:  # keep the keys, and which columns hold one value throughout
                    same = _one_value(batch, same, first=False)
                    batch = batch.select(["key"])
                batches.append(batch)
            table = HeldRows(batches)  # the batches as they came: a merge into one table copied them all
            fetch, filled = large_rows(self.table(), table.num_rows) if held else ((), None)
        except (StaleReadError, IndexDamagedError):
            raise
        except Exception as exc:  # noqa: BLE001  missing or truncated data files of the pinned version
            raise self._missing(f"the rows of table version {self.entry['version']}", exc) from None
        if table.num_rows != self.rows:
            raise IndexDamagedError(
                f"{self.folder}: shard {self.name!r} table version {self.entry['version']} holds {table.num_rows} "
                f"rows, the manifest says {self.rows}; {REPAIR}"
            )
        keys = table.keys()
        order = np.argsort(keys, kind="stable").astype(np.int32 if len(keys) < 2**31 else np.int64)
        sorted_keys = np.ascontiguousarray(keys[order], dtype=np.int64)
        if not held or not table.num_rows:
            return _Meta(sorted_keys, order, same=same)
        large = np.full(self.rows, filled is None)  # a hit in a row marked here fetches the ``fetch`` columns
        if filled is not None and len(filled):
            large[order[np.minimum(np.searchsorted(sorted_keys, filled), len(order) - 1)]] = True
        return _Meta(sorted_keys, order, table, large, fetch=fetch)

    # ----------------------------------------------------------------- lookups
    def offsets(self, keys) -> np.ndarray:
        """Row offset of each key; -1 where the key is not in this shard."""
        meta = self.meta()
        wanted = np.asarray(keys, dtype=np.int64)
        if not len(meta.sorted_keys):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(meta.sorted_keys, wanted), len(meta.sorted_keys) - 1)
        return np.where(meta.sorted_keys[at] == wanted, meta.order[at], -1)

    def _offsets_or_damage(self, keys: list[int]) -> np.ndarray:
        """Row offsets of keys FAISS returned; one the pinned table lacks means the two disagree."""
        offsets = self.offsets(keys)
        if (offsets < 0).any():
            missing = [k for k, o in zip(keys, offsets, strict=True) if o < 0]
            raise IndexDamagedError(
                f"{self.folder}: shard {self.name!r}: FAISS returned key(s) {missing[:3]} that table version "
                f"{self.entry['version']} does not hold; the FAISS file and the table disagree; {REPAIR}"
            )
        return offsets

    def rows_of(self, keys) -> dict[int, dict[str, Any]]:
        """Every stored column but the vector of the rows with these keys; a key not found is damage."""
        keys = [int(k) for k in keys]
        if not keys:
            return {}
        offsets = self._offsets_or_damage(keys)
        meta = self.meta()
        if meta.table is not None:
            return self._held_rows(meta, offsets)
        with self._lock:
            out = {k: self._rows[k] for k in keys if k in self._rows}
            for k in out:
                self._rows.move_to_end(k)
        fetch = sorted({int(o) for k, o in zip(keys, offsets, strict=True) if k not in out})
        if fetch:
            same = meta.same or {}
            got = self._take(fetch, [c for c in ROW_COLUMNS if c not in same])
            with self._lock:
                for row in got:
                    row.update(same)
                    out[row["key"]] = self._rows[row["key"]] = row
                while len(self._rows) > ROW_CACHE:
                    self._rows.popitem(last=False)
        if len(out) != len(set(keys)):
            raise IndexDamagedError(
                f"{self.folder}: shard {self.name!r}: table version {self.entry['version']} returned other rows "
                f"than asked by offset; {REPAIR}"
            )
        return {k: dict(out[k]) for k in keys}

    def _held_rows(self, meta: _Meta, offsets: np.ndarray) -> dict[int, dict[str, Any]]:
        rows = meta.table.rows(offsets)
        for row in rows:
            for column in LARGE_COLUMNS:
                row[column] = None
        fetch = [int(o) for o in offsets if meta.large[o]]
        if fetch:
            by_key = {r.pop("key"): r for r in self._take(fetch, ["key", *meta.fetch])}
            for row in rows:
                row.update(by_key.get(row["key"], {}))
        return {row["key"]: row for row in rows}

    def _take(self, offsets: list[int], columns: list[str]) -> list[dict[str, Any]]:
        return self._take_arrow(offsets, columns).to_pylist()

    def _take_arrow(self, offsets: list[int], columns: list[str]):
        """These row offsets' columns from the pinned table version, as a pyarrow Table.

        Read through the Lance dataset itself where pylance is installed: at 10M rows LanceDB's
        ``take_offsets`` costs ~11 ms for every column of 10 rows, the dataset's ``take`` ~4 ms
        (``benchmarks/RESULTS.md``). A dataset that cannot read the table (a pylance older than the
        table's format) falls back to LanceDB, which wrote it; only when that fails too is it damage."""
        dataset = self._lance()
        if dataset is not None:
            try:
                return dataset.take(offsets, columns=columns)
            except Exception:  # noqa: BLE001  judged below by LanceDB, the table's own reader
                with self._lock:
                    self._dataset = False
        try:
            return self.table().take_offsets(offsets).select(columns).to_arrow()
        except Exception as exc:  # noqa: BLE001  missing or truncated data files of the pinned version
            raise self._missing(f"the rows of table version {self.entry['version']}", exc) from None

    def _lance(self):
        """The pinned table version as a ``lance`` dataset; None without pylance."""
        with self._lock:
            if self._dataset is None:
                table = self.table()
                try:
                    self._dataset = table.to_lance()
                except Exception:  # noqa: BLE001  ImportError without pylance; LanceDB's own path is used then
                    self._dataset = False
            return self._dataset or None

    def vector(self, key: int) -> np.ndarray | None:
        """The stored vector of the row with this key (``like=``), or None.

        Read from the FAISS index in memory where it holds every vector unchanged (``IDMap2,Flat`` and
        ``IVF,Flat`` store raw float32), so it equals the table's copy bit for bit without a read from
        disk; an IVF index gets a key -> list position map on the first such lookup (about 16 bytes a
        row). Any other kind stores codes, so the vector is read from the table."""
        offset = int(self.offsets([key])[0])
        if offset < 0:
            return None
        if not str(self.entry.get("index", {}).get("factory", "IDMap2,Flat")).endswith(",Flat"):
            # an index that stores codes, not the vectors themselves: the table's copy is the exact one
            got = self._take_arrow([offset], ["vector"])
            return np.asarray(got.column("vector")[0].as_py(), dtype=np.float32)
        index = self.index()
        with self._lock:
            if not self._direct_map:
                for one in (index, self._delta):
                    if one is not None:
                        _direct_map(one)
                self._direct_map = True
        if self._delta is not None:  # added since the base file: in the delta index
            with contextlib.suppress(RuntimeError):
                return self._delta.reconstruct(int(key))
        try:
            return index.reconstruct(int(key))
        except RuntimeError as exc:  # the table holds the key, the checked FAISS file does not
            raise IndexDamagedError(
                f"{self.folder}: shard {self.name!r}: row key {key} of table version {self.entry['version']} is "
                f"not in its FAISS file ({brief(exc)}); {REPAIR}"
            ) from None

    def keys_where(self, predicate: str) -> np.ndarray:
        got = self.table().search().where(predicate).select(["key"]).limit(None).to_arrow()
        return got.column("key").to_numpy().astype(np.int64)

    def matching(self, predicate: str) -> Matching:
        """What ``predicate`` matches in this pinned version: found once, kept while it is in recent use."""
        with self._lock:
            if (found := self._filters.get(predicate)) is not None:
                self._filters.move_to_end(predicate)
                return found
        found = Matching(self.keys_where(predicate))  # a scan of the table: not under the lock
        with self._lock:
            self._filters[predicate] = found
            held = sum(m.keys.size for m in self._filters.values())
            while len(self._filters) > 1 and (len(self._filters) > FILTER_CACHE or held > FILTER_CACHE_KEYS):
                held -= self._filters.popitem(last=False)[1].keys.size
        return found

    def keys_with_hash(self, content_hash: str) -> set[int]:
        """Keys of the rows made from these bytes (a query file that is itself in the index)."""
        table = self.meta().table
        if table is not None:
            return table.keys_with("content_hash", content_hash)
        if len(content_hash) != 64 or any(c not in "0123456789abcdef" for c in content_hash):
            raise ValueError(f"not a sha256 hex digest: {content_hash!r}")
        return set(self.keys_where(f"content_hash = '{content_hash}'").tolist())

    # ------------------------------------------------------------------ search
    def search(
        self, vec: np.ndarray, k: int, *, allowed: Matching | np.ndarray | None, excluded: set[int]
    ) -> list[tuple[int, float]]:
        """(key, cosine) of the top ``k``, only among ``allowed`` keys when given (a where filter's
        :meth:`matching`, or the keys), never ``excluded`` ones.

        After a delta publish: the base index without the ids removed since, and the delta index of the
        rows added since, merged by score."""
        index = self.index()
        if allowed is not None and not isinstance(allowed, Matching):
            allowed = Matching(np.asarray(allowed, np.int64))
        gpu = self.gpu_index() if allowed is None and len(excluded) <= POST_FILTER_MAX else None
        if gpu is not None:  # FAISS on the GPU ignores selectors: unfiltered searches only, removed ids left out
            found = self._search_in(gpu, None, _NONE, vec, k, None, excluded, on_gpu=True)
        else:
            found = self._search_in(index, self._dead, self._removed, vec, k, allowed, excluded)
        if self._delta is not None and self._delta.ntotal:
            # the delta's probed lists hold few rows: fewer than k from it is normal, the base has the rest;
            # only when both together fall short are all its lists probed
            more = self._search_in(self._delta, None, _NONE, vec, k, allowed, excluded, short_ok=True)
            if len(found) + len(more) < k:
                more = self._search_in(self._delta, None, _NONE, vec, k, allowed, excluded)
            found = sorted(found + more, key=lambda hit: -hit[1])[:k]
        return found

    def gpu_index(self):
        """The GPU copy of the base index, when asked for and it could be made (see ``gpu_state``), else None."""
        if self.gpu_state != "not loaded yet":  # not asked, made, or refused: settled
            return self._gpu
        with self._lock:
            if self.gpu_state == "not loaded yet":
                from . import ann

                base = self.index()
                if len(self._removed):  # taken out of a copy read for this alone, not the mapped base
                    base = ann.read(manifests.faiss_path(self.folder, self.entry["faiss"]))
                self._gpu, self.gpu_state = ann.gpu_copy(base, self.entry.get("index", {}), self._removed)
            return self._gpu

    def _search_in(
        self, index, dead, removed: np.ndarray, vec, k: int, allowed, excluded: set[int], short_ok=False, on_gpu=False
    ):
        """One index's top k; ``short_ok``: fewer than k from the probed lists is accepted as it is."""
        faiss = faiss_module()
        live = index.ntotal - len(removed)
        if live <= 0:
            return []
        selector, matching = dead, live
        if allowed is not None:
            selector, matching = allowed.selector(removed)
            if len(excluded) > POST_FILTER_MAX:  # many left out: a selector of its own
                keys = allowed.keys[~np.isin(allowed.keys, removed)] if len(removed) else allowed.keys
                keys = np.setdiff1d(keys, np.fromiter(excluded, np.int64, count=len(excluded)), assume_unique=True)
                selector, matching, excluded = faiss.IDSelectorBatch(keys), keys.size, set()
            if matching == 0:
                return []
        elif len(excluded) > POST_FILTER_MAX:
            inner = faiss.IDSelectorBatch(np.fromiter(excluded, np.int64, count=len(excluded)))
            selector = faiss.IDSelectorNot(inner)
            selector.inner = inner  # keep the wrapped selector alive as long as the outer one
            if dead is not None:
                both = faiss.IDSelectorAnd(selector, dead)
                both.parts = (selector, dead)
                selector = both
            matching, excluded = live - self._excluded_in(index, excluded), set()
        if excluded:
            # a few ids left out (like='s own row, exclude=): the top k + len(excluded) without them is
            # the same top k, and spares a selector check on every vector scanned
            wider = min(k + len(excluded), live)
            found = self._search(index, vec, wider, selector, 0 if short_ok else matching, on_gpu)
            return [(key, score) for key, score in found if key not in excluded][:k]
        return self._search(index, vec, min(k, live), selector, 0 if short_ok else matching, on_gpu)

    def _excluded_in(self, index, keys: set[int]) -> int:
        """How many of ``keys`` ``index`` (the delta index, else the base) holds: ids are excluded from every
        shard alike, so most may be other shards' ids."""
        keys = np.fromiter(keys, np.int64, count=len(keys))
        keys = keys[self.offsets(keys) >= 0]  # in this shard's table: in the base (not removed) or the delta
        in_delta = np.isin(keys, self._delta_keys)
        return int(in_delta.sum() if index is self._delta else len(keys) - in_delta.sum())

    def _search(self, index, vec: np.ndarray, k: int, selector, matching: int | None = None, on_gpu=False):
        import faiss

        from .ann import GPU_MAX_K, codes_of

        matching = index.ntotal if matching is None else matching
        info = self.entry.get("index", {})
        coded = codes_of(info) not in ("exact", "flat")  # its scores are the codes': re-ranked exactly, always
        if on_gpu:  # the GPU copy: no selector, nprobe set on it; what it cannot answer goes to the CPU index
            rerank = int(info.get("rerank") or 1)
            width = min(k * rerank, index.ntotal)
            if width <= GPU_MAX_K:
                with self._gpu_lock:
                    found = _pairs(*index.search(vec[None, :], width))
                if len(found) >= min(width, matching):
                    return self._rerank(vec, found, k) if coded else found
            return self._search(self.index(), vec, k, self._dead, matching)
        if info.get("type") != "ivf":
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            return _pairs(*index.search(vec[None, :], k, params=params))
        nprobe = int(info.get("nprobe") or 1)
        rerank = int(info.get("rerank") or 1)  # an index of codes: its top k * rerank, re-ranked exactly
        width = min(k * rerank, index.ntotal)
        params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        found = _pairs(*index.search(vec[None, :], width, params=params))
        if len(found) < min(width, matching):
            # a selective filter can leave the probed lists short of k matches: probe them all
            params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nlist)
            found = _pairs(*index.search(vec[None, :], width, params=params))
        return self._rerank(vec, found, k) if coded else found

    def _rerank(self, vec: np.ndarray, found: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
        """The top ``k`` of FAISS's candidates by exact cosine, from the table's float32 vectors."""
        if not found:
            return found
        offsets = self._offsets_or_damage([key for key, _ in found])
        got = self._take_arrow([int(o) for o in offsets], ["key", "vector"])
        keys = got.column("key").to_numpy()
        vecs = np.asarray(got.column("vector").combine_chunks().flatten().to_numpy(), dtype=np.float32)
        scores = vecs.reshape(len(keys), -1) @ vec
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(keys[i]), float(scores[i])) for i in order]


def _one_value(batch, same: dict[str, Any], first: bool) -> dict[str, Any]:
    """Of the columns in ``same``, those of one value (null included) in ``batch`` and, unless ``first``,
    of the value ``same`` holds for them."""
    import pyarrow.compute as pc

    out = {}
    for column in same:
        values = batch.column(column)
        if len(values) and pc.count_distinct(values, mode="all").as_py() == 1:
            value = values[0].as_py()
            if first or same[column] == value:
                out[column] = value
    return out


def faiss_module():
    import faiss

    return faiss


def _direct_map(index) -> None:
    """Let ``index.reconstruct(key)`` find any key: ``IDMap2`` keeps its own map; IVF gets a hash table."""
    import faiss

    if isinstance(index, faiss.IndexIDMap2):
        return
    ivf = faiss.extract_index_ivf(index)
    if ivf.direct_map.type != faiss.DirectMap.Hashtable:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


def _pairs(scores: np.ndarray, keys: np.ndarray) -> list[tuple[int, float]]:
    """(key, score) of one query's results, FAISS's -1 padding dropped."""
    return [(int(key), float(score)) for key, score in zip(keys[0], scores[0], strict=True) if key >= 0]


class Snapshot:
    """Readers of every shard of one published manifest."""

    def __init__(
        self, folder: Path, manifest: dict[str, Any], tables: ShardTables | None = None, *, gpu_search: bool = False
    ):
        self.folder = folder
        self.manifest = manifest
        tables = tables or ShardTables(folder / "tables")
        serial = manifest.get("serial", 0)
        self.readers = {
            name: ShardReader(folder, tables, name, entry, serial, gpu_search)
            for name, entry in manifest["shards"].items()
        }

    @classmethod
    def open(cls, folder: Path, *, gpu_search: bool = False) -> Snapshot:
        """The published state of ``folder``; ``gpu_search``: each shard searches a GPU copy of its index
        where FAISS sees a GPU and the copy fits (:func:`unite_search.ann.gpu_copy`)."""
        return cls(folder, manifests.require(folder), gpu_search=gpu_search)
