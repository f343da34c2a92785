"""An index folder, as its writer sees it: the manifest, the lock, the shard tables, publishing, run logs.

Layout (see ``indexes/README.md``)::

    manifest.json          the published state: encoder, settings, shards (table version, FAISS file + checksum)
    ingest.lock            held (flock) by the one ingest allowed to write
    tables/<shard>.lance   one LanceDB table per shard (``image``, ``video``, ``text``, ``image+text``...)
    tables/files.lance     the read stage's cache: path, size, mtime, sha256, probe results
    faiss/<shard>.v<N>.faiss   the FAISS index over version N of that shard's table
    runs/<time>.json       each ingest's report, failures included

Each job lives in its own module (``manifest``, ``lock``, ``tables``, ``filecache``, ``publish``,
``runs``); this class only ties them to one folder. Readers use :mod:`unite_search.reader` instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import manifest as manifests
from .errors import (
    IndexDamagedError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexWriteError,
)
from .lock import writer_lock
from .publish import disk_bytes, needs_repair, publish
from .report import OK, WITH_FAILURES
from .runs import last_run, write_run
from .tables import ShardTables

__all__ = [
    "IndexDamagedError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexStore",
    "IndexWriteError",
]

TABLES = "tables"


class IndexStore:
    """One index folder, for writing (the writer holds :meth:`lock`) and for the tools around it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tables = ShardTables(self.path / TABLES)

    def read_manifest(self) -> dict[str, Any] | None:
        return manifests.read(self.path)

    def require_manifest(self) -> dict[str, Any]:
        return manifests.require(self.path)

    def init(self, encoder: dict[str, Any], ingest: dict[str, Any], corpus: str) -> dict[str, Any]:
        """The manifest of this index, created (with no shards) if there is none; refuses mismatches."""
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.read_manifest()
        if manifest is None:
            manifest = manifests.new(encoder, ingest, corpus)
            manifests.write(self.path, manifest)
            return manifest
        manifests.check(self.path, manifest, encoder, ingest, corpus)
        # the same weights may have moved (a model or adapter folder), or be named by an identity rule of
        # before (manifests.check accepted it): recorded as they are now, by this run
        manifest["encoder"].update({k: encoder[k] for k in (*manifests.LOCATION_KEYS, "revision") if k in encoder})
        return manifest

    def check(self, manifest, encoder, ingest, corpus, hint: str | None = None) -> None:
        manifests.check(self.path, manifest, encoder, ingest, corpus, hint)

    def lock(self):
        return writer_lock(self.path)

    def publish(self, manifest: dict[str, Any], shards: Iterable[str], *, flat_max: int, **options):
        """:func:`unite_search.publish.publish` on this index (``memory``, ``gpu``, ``incremental``)."""
        return publish(self.path, self.tables, manifest, shards, flat_max=flat_max, **options)

    def needs_repair(self, manifest: dict[str, Any]) -> dict[str, str]:
        return needs_repair(self.path, manifest)

    def read_rows(self, shard: str, columns: list[str] | None = None, version: int | None = None):
        """A shard's rows as a pyarrow table (the published version by default)."""
        if version is None:
            entry = self.require_manifest()["shards"].get(shard)
            if entry is None:
                raise IndexNotFoundError(f"{self.path} has no published shard {shard!r}")
            version = entry["version"]
        return self.tables.read(shard, version, columns)

    def write_run(self, report: dict[str, Any]) -> Path:
        return write_run(self.path, report)

    def last_run(self) -> dict[str, Any] | None:
        return last_run(self.path)

    def last_finished_run(self) -> dict[str, Any] | None:
        """The latest run that walked the whole corpus to its end: its failures are the corpus's."""
        return last_run(self.path, (OK, WITH_FAILURES))

    def disk_bytes(self) -> int:
        return disk_bytes(self.path)

    def info(self, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``unite-search info --json`` prints (and the server's ``/info``): shards, counts, model,
        settings, size on disk and the last run with its failures."""
        if manifest is None:
            manifest = self.require_manifest()
        return {
            "index": os.path.abspath(self.path),
            "corpus": manifest.get("corpus"),
            "model": manifest["encoder"].get("model_id"),
            "revision": manifest["encoder"].get("revision"),
            "dim": manifest["encoder"].get("dim"),
            "metric": manifest.get("metric"),
            "shards": manifest.get("shards", {}),
            "encoder": manifest["encoder"],
            "ingest": manifest.get("ingest"),
            "versions": manifest.get("versions"),
            "disk_bytes": self.disk_bytes(),
            "updated": manifest.get("updated"),
            "last_run": self.last_run(),
            # a run refused or stopped (another model, Ctrl-C) hides no failure of the one before it
            "last_finished_run": self.last_finished_run(),
            "outdated": manifests.outdated(manifest),  # why this version cannot query or add to it, or None
        }
