"""An index on disk: a manifest, one LanceDB table and one FAISS file per shard, a lock.

Layout (see ``indexes/README.md``)::

    manifest.json          the published state: encoder, settings, shards (table version, FAISS file)
    ingest.lock            held (flock) by the one ingest allowed to write
    tables/<shard>.lance   one LanceDB table per shard (``image``, ``video``, ``text``, ``image+text``...)
    tables/files.lance     the read stage's cache: path, size, mtime, sha256, probe results
    faiss/<shard>.v<N>.faiss   the FAISS index over version N of that shard's table
    runs/<time>.json       each ingest's report, failures included

Writers append to the tables in batches as they go (so a killed run loses at most one batch);
readers open the table versions and FAISS files that ``manifest.json`` names, so they see the last
published state until the next run publishes by replacing the manifest (an atomic rename).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingDependencyError, UniteError
from .modality import Modality

FORMAT = 1
MANIFEST = "manifest.json"
LOCK = "ingest.lock"
TABLES = "tables"
FAISS_DIR = "faiss"
RUNS = "runs"
FILES_TABLE = "files"
READ_BATCH = 65536
SHARD_ORDER = (Modality.IMAGE, Modality.VIDEO, Modality.TEXT)  # "image+text", not "text+image"


class IndexLockedError(UniteError):
    """Another ingest holds the index's lock."""


class IndexMismatchError(UniteError):
    """The index was built with another model, other settings or another corpus."""


class IndexNotFoundError(UniteError):
    """The folder holds no unite-search index."""


def shard_name(modalities: Iterable[Modality | str]) -> str:
    """The shard a set of modalities lands in: ``image``, ``video+text``..."""
    wanted = {Modality(m) for m in modalities}
    return "+".join(m.value for m in SHARD_ORDER if m in wanted)


def table_name(shard: str) -> str:
    return shard.replace("+", "_")


def row_key(row_id: str) -> int:
    """The FAISS id of a row: 63 bits of sha256(id), stable across runs and machines."""
    import hashlib

    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big") & ((1 << 63) - 1)


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _lancedb():
    try:
        import lancedb
    except ImportError as exc:
        raise MissingDependencyError("LanceDB is not installed: pip install lancedb") from exc
    return lancedb


def row_schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("key", pa.int64(), nullable=False),  # FAISS id, row_key(id)
            pa.field("unit", pa.string(), nullable=False),  # the work unit (file content) the row came from
            pa.field("unit_rows", pa.int32(), nullable=False),  # rows that unit makes; fewer = unfinished
            pa.field("modality", pa.string(), nullable=False),
            pa.field("source", pa.string()),  # "file", "pair" or "<manifest>.jsonl:<line>"
            pa.field("path", pa.string()),  # first corpus-relative path holding the content
            pa.field("paths", pa.list_(pa.string())),  # every path with identical bytes
            pa.field("content_hash", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.float64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("duration", pa.float64()),  # seconds, whole clip
            pa.field("frames", pa.int32()),  # frames the encoder saw
            pa.field("start", pa.float64()),  # segment start, seconds
            pa.field("end", pa.float64()),
            pa.field("char_start", pa.int64()),  # passage span in the text file, characters
            pa.field("char_end", pa.int64()),
            pa.field("text", pa.string()),  # the text the model saw (passage, or a manifest item's text)
            pa.field("caption", pa.string()),  # sidecar caption
            pa.field("metadata", pa.string()),  # JSON object from a manifest
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def files_schema():
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("rel", pa.string(), nullable=False),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("sha256", pa.string()),
            pa.field("modality", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("duration", pa.float64()),
            pa.field("fps", pa.float64()),
            pa.field("total_frames", pa.int64()),
            pa.field("passages", pa.list_(pa.int64())),
        ]
    )


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("unite-search", "torch", "transformers", "lancedb", "pyarrow", "faiss-cpu", "faiss-gpu", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, payload: Any) -> None:
    """Write atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class UnitState:
    rows: int  # rows present
    expected: int  # rows the unit makes
    paths: tuple[str, ...]
    caption: str | None


class IndexStore:
    """Read and write one index folder. Writers hold :meth:`lock`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._db = None

    # ---------------------------------------------------------------- manifest
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            with open(self.manifest_path) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise UniteError(f"{self.manifest_path}: unreadable manifest ({exc})") from exc

    def require_manifest(self) -> dict[str, Any]:
        manifest = self.read_manifest()
        if manifest is None:
            raise IndexNotFoundError(f"{self.path} holds no unite-search index (no {MANIFEST})")
        if manifest.get("format") != FORMAT:
            raise IndexMismatchError(f"{self.path}: index format {manifest.get('format')}, this version reads {FORMAT}")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated"] = _now()
        write_json(self.manifest_path, manifest)

    def init(self, encoder: dict[str, Any], ingest: dict[str, Any], corpus: str) -> dict[str, Any]:
        """The manifest of this index, created (with no shards) if there is none; refuses mismatches."""
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.read_manifest()
        if manifest is None:
            manifest = {
                "format": FORMAT,
                "created": _now(),
                "corpus": corpus,
                "encoder": encoder,
                "ingest": ingest,
                "metric": "cosine (inner product of L2-normalised vectors)",
                "shards": {},
                "versions": library_versions(),
            }
            self.write_manifest(manifest)
            return manifest
        self.check(manifest, encoder, ingest, corpus)
        return manifest

    def check(
        self,
        manifest: dict[str, Any],
        encoder: dict[str, Any],
        ingest: dict[str, Any],
        corpus: str,
        hint: str | None = None,
    ) -> None:
        rebuild = hint or f"To rebuild, remove the index (rm -r {self.path}) or pass another --index."
        if manifest.get("format") != FORMAT:
            raise IndexMismatchError(
                f"{self.path}: index format {manifest.get('format')}, this version writes {FORMAT}"
            )
        if manifest.get("corpus") != corpus:
            raise IndexMismatchError(
                f"{self.path} indexes the corpus {manifest.get('corpus')}, not {corpus}; ingesting here would "
                f"remove every row of the other corpus. {rebuild}"
            )
        diffs = []
        old_enc = {k: v for k, v in manifest.get("encoder", {}).items() if k != "model_id"}
        new_enc = {k: v for k, v in encoder.items() if k != "model_id"}  # the folder may move; revision is its identity
        for section, old, new in (("encoder", old_enc, new_enc), ("ingest", manifest.get("ingest", {}), ingest)):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    diffs.append(f"{section}.{key}: index has {old.get(key)!r}, this run {new.get(key)!r}")
        if diffs:
            model = manifest.get("encoder", {}).get("model_id")
            raise IndexMismatchError(
                f"{self.path} was built with another model or settings (model {model}); vectors would not be "
                "comparable:\n  " + "\n  ".join(diffs) + f"\n{rebuild}"
            )

    # -------------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; released by the kernel even when the process is killed."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / LOCK, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise IndexLockedError(
                    f"{self.path} is being written by another ingest ({holder}); wait for it to finish. "
                    "Searching the index meanwhile is fine."
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()} since {_now()}")
            fh.flush()
            yield
        finally:
            fh.close()  # closing drops the flock

    # ------------------------------------------------------------------ tables
    @property
    def db(self):
        if self._db is None:
            self._db = _lancedb().connect(str(self.path / TABLES))
        return self._db

    def table_names(self) -> set[str]:
        if not (self.path / TABLES).exists():
            return set()
        result = self.db.list_tables()
        return set(getattr(result, "tables", result))

    def table(self, shard: str, dim: int | None = None, version: int | None = None):
        """The shard's table (latest, or at ``version``); created empty when ``dim`` is given."""
        name = table_name(shard)
        if name in self.table_names():
            return self.db.open_table(name, version=version) if version is not None else self.db.open_table(name)
        if dim is None:
            raise IndexNotFoundError(f"{self.path} has no shard {shard!r}")
        return self.db.create_table(name, schema=row_schema(dim))

    def shards_on_disk(self) -> list[str]:
        names = self.table_names() - {FILES_TABLE}
        return sorted(n.replace("_", "+") for n in names)

    def unit_states(self, shard: str) -> dict[str, UnitState]:
        """What each work unit already has in the shard (latest table version)."""
        if table_name(shard) not in self.table_names():
            return {}
        table = self.table(shard)
        found: dict[str, list] = {}
        cols = ["unit", "unit_rows", "paths", "caption"]
        for batch in table.search().select(cols).limit(None).to_batches(READ_BATCH):
            for unit, expected, paths, caption in zip(*(batch.column(c).to_pylist() for c in cols), strict=True):
                entry = found.setdefault(unit, [0, expected, tuple(paths or ()), caption])
                entry[0] += 1
        return {u: UnitState(r, e, p, c) for u, (r, e, p, c) in found.items()}

    def add_rows(self, shard: str, rows: list[dict[str, Any]], vectors: np.ndarray) -> int:
        """Append rows (one commit); returns the table's new version."""
        import pyarrow as pa

        dim = vectors.shape[1]
        schema = row_schema(dim)
        columns = {f.name: [r.get(f.name) for r in rows] for f in schema if f.name != "vector"}
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
        table = self.table(shard, dim)
        table.add(pa.table(columns, schema=schema))
        return table.version

    def delete_units(self, shard: str, units: Iterable[str], chunk: int = 500) -> None:
        units = sorted(units)
        table = self.table(shard)
        for i in range(0, len(units), chunk):
            table.delete(f"unit IN ({_sql_list(units[i : i + chunk])})")

    def relabel(self, shard: str, changes: dict[str, tuple[tuple[str, ...], str | None]], chunk: int = 500) -> None:
        """Set new paths and caption on every row of the given units (no re-encoding)."""
        units = sorted(changes)
        table = self.table(shard)
        for i in range(0, len(units), chunk):
            part = units[i : i + chunk]
            rows = table.search().where(f"unit IN ({_sql_list(part)})").limit(None).to_arrow()
            if rows.num_rows == 0:
                continue
            unit_col = rows.column("unit").to_pylist()
            new_paths = [list(changes[u][0]) for u in unit_col]
            rows = rows.set_column(rows.schema.get_field_index("paths"), "paths", _array(new_paths, rows, "paths"))
            rows = rows.set_column(
                rows.schema.get_field_index("path"), "path", _array([p[0] for p in new_paths], rows, "path")
            )
            rows = rows.set_column(
                rows.schema.get_field_index("caption"),
                "caption",
                _array([changes[u][1] for u in unit_col], rows, "caption"),
            )
            table.merge_insert("id").when_matched_update_all().execute(rows)

    def restore(self, versions: dict[str, int]) -> None:
        """Put shards back to the given table versions (the ``raise`` policy's rollback)."""
        for shard, version in versions.items():
            table = self.table(shard)
            if table.version != version:
                table.restore(version)

    def versions(self) -> dict[str, int]:
        return {shard: self.table(shard).version for shard in self.shards_on_disk()}

    def read_rows(self, shard: str, columns: list[str] | None = None, version: int | None = None):
        """A shard's rows as a pyarrow table (the published version by default)."""
        if version is None:
            entry = self.require_manifest()["shards"].get(shard)
            if entry is None:
                raise IndexNotFoundError(f"{self.path} has no published shard {shard!r}")
            version = entry["version"]
        query = self.table(shard, version=version).search().limit(None)
        if columns is not None:
            query = query.select(columns)
        return query.to_arrow()

    # -------------------------------------------------------------- file cache
    def file_cache(self) -> dict[str, dict[str, Any]]:
        if FILES_TABLE not in self.table_names():
            return {}
        rows = self.db.open_table(FILES_TABLE).search().limit(None).to_arrow().to_pylist()
        return {r["rel"]: r for r in rows}

    def save_file_cache(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        data = pa.Table.from_pylist(rows, schema=files_schema())
        self.db.create_table(FILES_TABLE, data=data, mode="overwrite")

    # ----------------------------------------------------------------- publish
    def _batches(self, table, dim: int):
        def gen():
            for batch in table.search().select(["key", "vector"]).limit(None).to_batches(READ_BATCH):
                keys = batch.column("key").to_numpy().astype(np.int64)
                vecs = np.asarray(batch.column("vector").flatten().to_numpy(), dtype=np.float32).reshape(-1, dim)
                yield keys, np.ascontiguousarray(vecs)

        return gen

    def publish(self, manifest: dict[str, Any], shards: Iterable[str], *, flat_max: int, gpu="auto") -> dict[str, Any]:
        """Compact, index and publish the given shards: the manifest names their new versions."""
        from . import ann

        dim = int(manifest["encoder"]["dim"])
        (self.path / FAISS_DIR).mkdir(exist_ok=True)
        for shard in shards:
            table = self.table(shard, dim)
            # merge the many small commits of a run; old versions stay readable (cleanup after 7 days)
            table.optimize()
            version = table.version
            pinned = self.table(shard, version=version)
            n = pinned.count_rows()
            index, info = ann.build(self._batches(pinned, dim), n, dim, flat_max=flat_max, gpu=gpu)
            if index.ntotal != n:
                raise UniteError(f"shard {shard}: FAISS holds {index.ntotal} vectors, the table {n}")
            rel = f"{FAISS_DIR}/{table_name(shard)}.v{version}.faiss"
            ann.write(index, self.path / rel)
            manifest["shards"][shard] = {
                "table": table_name(shard),
                "version": version,
                "rows": n,
                "faiss": rel,
                "index": info,
            }
        manifest["versions"] = library_versions()
        self.write_manifest(manifest)
        live = {entry["faiss"] for entry in manifest["shards"].values()}
        for old in (self.path / FAISS_DIR).glob("*.faiss"):
            if f"{FAISS_DIR}/{old.name}" not in live:
                with contextlib.suppress(OSError):
                    old.unlink()
        return manifest

    def load_faiss(self, shard: str):
        from . import ann

        entry = self.require_manifest()["shards"][shard]
        return ann.read(self.path / entry["faiss"])

    # -------------------------------------------------------------------- runs
    def write_run(self, report: dict[str, Any]) -> Path:
        runs = self.path / RUNS
        runs.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = runs / f"{stamp}.json"
        write_json(path, report)
        return path

    def last_run(self) -> dict[str, Any] | None:
        runs = sorted((self.path / RUNS).glob("*.json")) if (self.path / RUNS).exists() else []
        if not runs:
            return None
        with open(runs[-1]) as fh:
            return json.load(fh)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def _array(values, table, column):
    import pyarrow as pa

    return pa.array(values, type=table.schema.field(column).type)
