"""Shard tables: one LanceDB table per shard under ``tables/``, written by the one writer.

Every write (rows added, deleted or relabelled) makes a new table version; readers open the
version a manifest names. Old versions go only when :meth:`ShardTables.compact` is told which
still have readers: LanceDB's own default would drop every version older than 7 days, published
or not.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexNotFoundError, MissingDependencyError
from .schema import FILES_TABLE, row_schema, shard_of_table, sql_list, table_name

READ_BATCH = 65536
NEVER = dt.timedelta(days=365 * 100)  # "prune nothing" for LanceDB's optimize
PRUNE_MARGIN = 1.0  # seconds kept before the oldest version that must stay
COMPACT_ALWAYS_ROWS = 100_000  # tables below this are compacted at every publish
COMPACT_FRAGMENTS = 20  # ... larger ones once they have more small fragments than this
COMPACT_DELETED = 100_000  # ... or this many deleted rows (or a tenth of their rows)
# Units named in one filter (each filter is a scan of the table: 500 a filter made a mass move or delete cost
# the table's size times the changes; 50,000 take ~0.8 s on 100k rows), and rows in one relabelling commit
UNITS_A_FILTER = 50_000
RELABEL_ROWS = 8192


def lancedb():
    try:
        import lancedb as module
    except ImportError as exc:
        raise MissingDependencyError("LanceDB is not installed: pip install lancedb") from exc
    return module


@dataclass(frozen=True)
class UnitState:
    rows: int  # rows present
    expected: int  # rows the unit makes
    paths: tuple[str, ...]
    caption: str | None
    source: str | None = None  # "file", "pair", or a manifest item's "file.jsonl:line"


class ShardTables:
    """The LanceDB tables of one index folder."""

    def __init__(self, folder: Path):
        self.folder = folder  # <index>/tables
        self._db = None

    @property
    def db(self):
        if self._db is None:
            self._db = lancedb().connect(str(self.folder))
        return self._db

    def names(self) -> set[str]:
        if not self.folder.exists():
            return set()
        result = self.db.list_tables()
        return set(getattr(result, "tables", result))

    def shards(self) -> list[str]:
        """Shards with a table on disk (published or not)."""
        return sorted(shard_of_table(n) for n in self.names() - {FILES_TABLE})

    def open(self, shard: str, version: int | None = None):
        """The shard's table, latest or at ``version``."""
        name = table_name(shard)
        if name not in self.names():
            raise IndexNotFoundError(f"{self.folder.parent} has no shard {shard!r}")
        return self.db.open_table(name, version=version) if version is not None else self.db.open_table(name)

    def open_or_create(self, shard: str, dim: int):
        name = table_name(shard)
        if name in self.names():
            return self.db.open_table(name)
        return self.db.create_table(name, schema=row_schema(dim))

    def versions(self) -> dict[str, int]:
        """Latest version of every shard table."""
        return {shard: self.open(shard).version for shard in self.shards()}

    def unit_states(self, shard: str) -> dict[str, UnitState]:
        """What each work unit already has in the shard (latest table version)."""
        return dict(self.held_units(shard))

    def held_units(self, shard: str) -> Iterator[tuple[str, UnitState]]:
        """(unit, what it has in the shard) for each unit of the latest table version, in the order of their
        first rows, each with its first row's columns. Counted in arrow, made Python objects a batch at a time: a
        dict of every unit (made twice, of lists then of states) peaked at ~0.8 KB a unit of a large shard."""
        import pyarrow as pa

        if table_name(shard) not in self.names():
            return
        cols = ["unit", "unit_rows", "paths", "caption", "source"]
        rows = self.open(shard).search().select(cols).limit(None).to_arrow()
        at = pa.table({"unit": rows.column("unit"), "at": np.arange(rows.num_rows, dtype=np.int64)})
        units = at.group_by("unit", use_threads=False).aggregate([("at", "count"), ("at", "min")])
        units = units.sort_by("at_min")  # in the order of the table's rows, as they were read before
        counts = units.column("at_count")
        firsts = rows.take(units.column("at_min"))
        del rows, at
        for i in range(0, firsts.num_rows, READ_BATCH):
            part = firsts.slice(i, READ_BATCH)
            count = counts.slice(i, READ_BATCH).to_pylist()
            for n, unit, expected, paths, caption, source in zip(count, *(part.column(c).to_pylist() for c in cols),
                                                                 strict=True):  # fmt: skip
                yield unit, UnitState(n, expected, tuple(paths or ()), caption, source)

    def add_rows(self, shard: str, rows: list[dict[str, Any]], vectors: np.ndarray) -> int:
        """Append rows (one commit); returns the table's new version."""
        import pyarrow as pa

        dim = vectors.shape[1]
        schema = row_schema(dim)
        columns = {f.name: [r.get(f.name) for r in rows] for f in schema if f.name != "vector"}
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
        table = self.open_or_create(shard, dim)
        table.add(pa.table(columns, schema=schema))
        return table.version

    def unit_keys(self, shard: str, units: Iterable[str], chunk: int = UNITS_A_FILTER) -> np.ndarray:
        """The keys of every row of the given units (latest table version), int64."""
        units = sorted(units)
        if not units or table_name(shard) not in self.names():
            return np.empty(0, np.int64)
        table = self.open(shard)
        parts = [np.empty(0, np.int64)]
        for i in range(0, len(units), chunk):
            query = table.search().where(f"unit IN ({sql_list(units[i : i + chunk])})").select(["key"])
            parts.append(query.limit(None).to_arrow().column("key").to_numpy().astype(np.int64))
        return np.concatenate(parts)

    def delete_units(self, shard: str, units: Iterable[str], chunk: int = UNITS_A_FILTER) -> int:
        """Delete every row of the given units; a unit with no row costs no write (no new version)."""
        units = sorted(units)
        if not units or table_name(shard) not in self.names():
            return 0
        table = self.open(shard)
        deleted = 0
        for i in range(0, len(units), chunk):
            predicate = f"unit IN ({sql_list(units[i : i + chunk])})"
            n = table.count_rows(predicate)
            if n:
                table.delete(predicate)
                deleted += n
        return deleted

    def relabel(
        self,
        shard: str,
        changes: dict[str, tuple[tuple[str, ...], str | None] | tuple[tuple[str, ...], str | None, str]],
        chunk: int = UNITS_A_FILTER,
    ) -> None:
        """Set new paths, caption and (when given) source on every row of the given units (no re-encoding):
        one scan a ``chunk`` of units, one commit a :data:`RELABEL_ROWS` rows (whole rows are written back,
        vectors included, so no more are held at once)."""
        import pyarrow as pa

        units = sorted(changes)
        table = self.open(shard)
        for i in range(0, len(units), chunk):
            query = table.search().where(f"unit IN ({sql_list(units[i : i + chunk])})").limit(None)
            held, count = [], 0
            for batch in itertools.chain(query.to_batches(RELABEL_ROWS), [None]):  # streamed from one version
                if batch is not None and batch.num_rows:
                    held.append(batch)
                    count += batch.num_rows
                if held and (count >= RELABEL_ROWS or batch is None):
                    _relabel_rows(table, pa.Table.from_batches(held), changes)
                    held, count = [], 0

    def restore(self, versions: dict[str, int]) -> None:
        """Put shards back to the given table versions (the ``raise`` policy's rollback); a shard's table
        made since (not in ``versions``) is dropped."""
        for shard in set(self.shards()) - set(versions):
            self.drop(shard)
        for shard, version in versions.items():
            table = self.open(shard)
            if table.version != version:
                table.restore(version)

    def drop(self, shard: str) -> None:
        """Remove a shard's table (one no manifest names)."""
        self.db.drop_table(table_name(shard))

    def remove_unreferenced(self) -> int:
        """Delete the files in shard tables that no table version references: what a run stopped mid-write
        left (the fragments a Ray worker wrote and the driver never committed). Only under the writer lock:
        another writer's files are unreferenced until it commits. Returns the files removed."""
        removed = 0
        for shard in self.shards():
            stats = self.open(shard).to_lance().cleanup_old_versions(older_than=NEVER, delete_unverified=True)
            removed += stats.data_files_removed + stats.deletion_files_removed + stats.index_files_removed
        return removed

    def read(self, shard: str, version: int, columns: list[str] | None = None):
        """A shard's rows at ``version`` as a pyarrow table."""
        query = self.open(shard, version).search().limit(None)
        if columns is not None:
            query = query.select(columns)
        return query.to_arrow()

    def compact(self, shard: str, keep: Iterable[int] = (), *, always: bool = False) -> int:
        """Merge a run's many small commits into few files, and drop the versions older than both the
        oldest of ``keep`` and :data:`~unite_search.manifest.KEEP_RECENT_SECONDS`. Returns the new version.

        LanceDB rewrites every fragment under about a million rows when it compacts, so a table past
        :data:`COMPACT_ALWAYS_ROWS` rows is compacted only once it is worth it (:func:`worth_compacting`):
        else a few new rows would cost a rewrite of the whole shard at each publish. ``always``: a shard's
        first publish (or a full build), whose many commits are merged whatever their count."""
        from .manifest import KEEP_RECENT_SECONDS

        table = self.open(shard)
        if not always and not worth_compacting(table):
            return table.version
        stamps = {v["version"]: v["timestamp"].timestamp() for v in table.list_versions()}  # naive local -> epoch
        oldest = min([stamps[v] for v in keep if v in stamps], default=None)
        cutoff = time.time() - KEEP_RECENT_SECONDS
        if oldest is not None:
            cutoff = min(cutoff, oldest)
        age = time.time() - cutoff + PRUNE_MARGIN
        table.optimize(cleanup_older_than=dt.timedelta(seconds=age) if age > PRUNE_MARGIN else NEVER)
        return table.version


def worth_compacting(table) -> bool:
    """LanceDB's own rule of thumb for ``optimize``: a small table always; a large one after
    :data:`COMPACT_FRAGMENTS` small fragments (appends, each a commit) or :data:`COMPACT_DELETED` rows
    deleted (or a tenth of its rows)."""
    stats = table.stats()
    rows = int(stats["num_rows"])
    if rows < COMPACT_ALWAYS_ROWS:
        return True
    if int(stats["fragment_stats"]["num_small_fragments"]) > COMPACT_FRAGMENTS:
        return True
    latest = max(table.list_versions(), key=lambda v: v["version"])
    deleted = int(latest.get("metadata", {}).get("total_deletion_file_rows", 0))
    return deleted >= min(COMPACT_DELETED, rows // 10)


def _relabel_rows(table, rows, changes) -> None:
    """Write ``rows`` back with the paths, caption and source ``changes`` gives their units (one commit)."""
    unit_col = rows.column("unit").to_pylist()
    new_paths = [list(changes[u][0]) for u in unit_col]
    rows = _set(rows, "paths", new_paths)
    rows = _set(rows, "path", [p[0] if p else None for p in new_paths])  # a text item has none
    rows = _set(rows, "caption", [changes[u][1] for u in unit_col])
    sources = rows.column("source").to_pylist()  # kept where a change does not name one
    rows = _set(rows, "source", [(*changes[u], old)[2] for u, old in zip(unit_col, sources, strict=True)])
    table.merge_insert("id").when_matched_update_all().execute(rows)


def _set(table, column: str, values: list):
    import pyarrow as pa

    at = table.schema.get_field_index(column)
    return table.set_column(at, column, pa.array(values, type=table.schema.field(column).type))


def version_files(table) -> tuple[Path, dict[str, int]]:
    """(the table's folder, the files one table version reads its rows from, relative to that folder, with
    their sizes): each fragment's data files and deletion file, and the files of its indexes (if any)."""
    dataset = table.to_lance()
    root = Path(dataset.uri)
    files = []
    for fragment in dataset.get_fragments():
        meta = fragment.metadata
        files += [f"data/{f.path}" for f in meta.files]
        if meta.deletion_file is not None:
            files.append(meta.deletion_file.path(meta.id))
    if hasattr(dataset, "describe_indices"):
        uuids = [segment.uuid for index in dataset.describe_indices() for segment in index.segments]
    else:  # pylance before describe_indices
        uuids = [index["uuid"] for index in dataset.list_indices()]
    for uuid in uuids:
        folder = root / "_indices" / str(uuid)
        files += [p.relative_to(root).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    return root, {rel: (root / rel).stat().st_size for rel in files}


def record_files(table, previous: dict[str, list] | None = None) -> dict[str, list]:
    """``{file: [size, sha256]}`` of :func:`version_files`. Lance never rewrites a file it wrote, so the
    checksum ``previous`` recorded for a file of the same name and size is kept, not computed again."""
    from .diskio import file_sha256

    root, files = version_files(table)
    previous = previous or {}
    out = {}
    for rel, size in files.items():
        known = previous.get(rel)
        out[rel] = list(known) if known is not None and known[0] == size else [size, file_sha256(root / rel)]
    return out


def file_problems(table, recorded: dict[str, list]) -> list[str]:
    """What differs between a table version's files and those ``recorded`` when it was published: a file
    missing, replaced, resized or with other bytes (a damaged file, or a table rewritten behind the index)."""
    from .diskio import file_sha256

    try:
        root, now = version_files(table)
    except OSError as exc:
        return [f"a file of the table is missing or unreadable ({exc.strerror or exc})"]
    problems = [f"{rel} is read by the table but was not published with it" for rel in sorted(set(now) - set(recorded))]
    for rel, (size, sha256) in sorted(recorded.items()):
        if rel not in now:
            problems.append(f"{rel} was published with the table but is no longer read by it")
        elif now[rel] != size:
            problems.append(f"{rel} is {now[rel]} bytes, published as {size}")
        elif file_sha256(root / rel) != sha256:
            problems.append(f"{rel} has other bytes than when it was published (sha256 differs)")
    return problems
