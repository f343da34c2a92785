"""The read stage's cache: what reading each corpus file told (hash, size, probe, passages), by path.

Kept as one LanceDB table (``tables/files.lance``) beside the shards; rewritten only when it changed,
with only its latest version kept (nobody reads an older one). A rerun skips reading any file whose
size and mtime match its row.

A rerun holds the cache as the one arrow table it reads, and finds each walked file's row by a vectorised
lookup: a dict a row (made twice) took ~1.2 KB and ~17 us a file, on a large corpus where few files changed.
Only the facts of cache hits are made, a column at a time; a save keeps their rows as they are.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np

from .corpus import Entry, FileFacts
from .modality import Modality
from .schema import FILES_TABLE, files_schema
from .tables import ShardTables

FACTS_CHUNK = 65536  # cache rows made into facts at once (bounds the lists of one column each)
_MODALITIES = {m.value: m.value for m in Modality}  # one string object a modality, not one a file


class FileCache:
    """The cache's rows in the current layout (an older one's missing columns filled), found by path."""

    def __init__(self, table=None):
        self.table = table if table is not None else files_schema().empty_table()
        self.kept = np.empty(0, np.int64)  # rows of facts let go before the save (see let_go)

    def __len__(self) -> int:
        return self.table.num_rows

    def find(self, entries: Sequence[Entry]) -> np.ndarray:
        """Each entry's row (the first of its path), or -1."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(self) or not entries:
            return np.full(len(entries), -1, np.int64)
        rels = pa.array([e.rel for e in entries], pa.string())
        return pc.index_in(rels, value_set=self.table.column("rel")).fill_null(-1).to_numpy().astype(np.int64)

    def same_stat(self, entries: Sequence[Entry], at: np.ndarray) -> np.ndarray:
        """Whether each entry's size and mtime are its row's (False where it has none)."""
        found = at >= 0
        if not found.any():
            return found
        rows = at[found]
        size = self._ints("size")[rows]
        mtime = self._ints("mtime_ns")[rows]
        out = np.zeros(len(entries), bool)
        idx = np.flatnonzero(found)
        out[idx] = (size == np.fromiter((entries[i].size for i in idx), np.int64, len(idx))) & (
            mtime == np.fromiter((entries[i].mtime_ns for i in idx), np.int64, len(idx))
        )
        return out

    def reads(self, at: np.ndarray) -> np.ndarray:
        """The read-stage edition of each row (``at`` >= 0)."""
        return self._ints("reads")[at]

    def row(self, at: int) -> dict[str, Any] | None:
        """One row as a dict (a file read again: its old facts), or None for -1."""
        return None if at < 0 else self.table.slice(int(at), 1).to_pylist()[0]

    def facts(self, at: np.ndarray, entries: Sequence[Entry]) -> list[FileFacts]:
        """The facts of these rows, for the entries of the same paths (their path and rel strings are used)."""
        out: list[FileFacts] = []
        for start in range(0, len(at), FACTS_CHUNK):
            rows = at[start : start + FACTS_CHUNK]
            part = self.table.take(rows)
            cols = [part.column(n).to_pylist() for n in _FACT_COLUMNS]
            for i, (row, size, mtime, sha, modality, w, h, dur, fps, frames, rot, vfr, spans, reads) in enumerate(
                zip(rows.tolist(), *cols, strict=True)
            ):
                e = entries[start + i]
                passages = tuple(tuple(spans[j : j + 4]) for j in range(0, len(spans), 4)) if spans else ()
                out.append(FileFacts(e.rel, e.path, size, mtime, sha, _MODALITIES.get(modality, modality), w, h, dur,
                                     fps, frames, rot, vfr, passages, reads, cached=row))  # fmt: skip
        return out

    def let_go(self, facts: dict[str, FileFacts], needed: Collection[str]) -> dict[str, FileFacts]:
        """The facts of files read by this run or at ``needed`` paths (the files of the units to encode, which
        a failure keeps out of the save); the others are recorded as their rows, which the save keeps, so that
        their objects go before the encoder comes."""
        held, rows = {}, []
        for rel, f in facts.items():
            if f.cached >= 0 and f.path not in needed:
                rows.append(f.cached)
            else:
                held[rel] = f
        self.kept = np.concatenate([self.kept, np.asarray(rows, np.int64)])
        return held

    def _ints(self, name: str) -> np.ndarray:
        return self.table.column(name).fill_null(-1).to_numpy().astype(np.int64)


# FileFacts' fields after rel and path, in order, as the cache's columns name them
_FACT_COLUMNS = ("size", "mtime_ns", "sha256", "modality", "width", "height", "duration", "fps", "total_frames",
                 "rotation", "vfr", "spans", "reads")  # fmt: skip


def load(tables: ShardTables) -> FileCache:
    """The cache, each row with the read-stage edition that wrote it (``reads``: a layout of before tells it);
    empty when absent or written by a layout not known here."""
    import pyarrow as pa

    if FILES_TABLE not in tables.names():
        return FileCache()
    table = tables.db.open_table(FILES_TABLE)
    schema = files_schema()
    before_reads = schema.remove(schema.get_field_index("reads"))
    before_vfr = before_reads.remove(before_reads.get_field_index("vfr"))
    filled = {schema: {}, before_reads: {"reads": 2}, before_vfr: {"reads": 1, "vfr": None}}.get(table.schema)
    if filled is None:
        return FileCache()  # an older layout: facts are cheap to read again
    data = table.search().limit(None).to_arrow()
    for name, value in filled.items():
        field = schema.field(name)
        data = data.append_column(field, pa.array([value] * data.num_rows, field.type))
    return FileCache(data.select(schema.names).cast(schema))


def save(tables: ShardTables, cache: FileCache, facts: Iterable[FileFacts]) -> bool:
    """Replace the cache with the rows of ``facts`` (and those the cache let go of) when they differ from it:
    a file's facts taken from the cache keep its row, and only those read by this run are made rows. Returns
    whether it wrote."""
    import pyarrow as pa

    kept: list[int] = []
    fresh: list[dict[str, Any]] = []
    for f in facts:
        if f.cached >= 0:
            kept.append(f.cached)
        else:
            fresh.append(f.to_row())
    if not fresh and len(kept) + len(cache.kept) == len(cache):  # every row kept (each by one path), none new
        return False
    schema = files_schema()
    rows = cache.table.take(np.sort(np.concatenate([cache.kept, np.asarray(kept, np.int64)])))
    data = pa.concat_tables([rows, pa.Table.from_pylist(fresh, schema=schema)])
    # "overwrite" of a table not there yet makes LanceDB print a warning on the terminal that it will be created
    mode = "overwrite" if FILES_TABLE in tables.names() else "create"
    table = tables.db.create_table(FILES_TABLE, data=data, mode=mode)
    with warnings.catch_warnings():  # LanceDB warns that other readers of old versions would fail: there are none
        warnings.simplefilter("ignore")
        table.optimize(cleanup_older_than=dt.timedelta(0))
    return True
