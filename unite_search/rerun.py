"""What a rerun of ``ingest`` takes from the index it finds, and when it has nothing to do.

A rerun needs no option repeated: the model, its settings and the ingest options not given are the ones
the index records (``ingest`` reads them through :func:`recorded_manifest`); so are the options that
choose the shards' index kinds and which files may be read (:func:`indexing_options`). A rerun over a
corpus whose files all look as the last clean run left them is done without opening a table or loading
the model (:func:`unchanged`).
"""

from __future__ import annotations

import hashlib
import numbers
import os
from pathlib import Path
from typing import Any

from . import ann
from .corpus import READS
from .errors import ConfigError, UniteError
from .manifest import MANIFEST
from .report import OK, IngestReport
from .store import IndexStore

WRITING = "ingest.writing"  # present from a run's first table write until it published


def same_model(given: str | os.PathLike, recorded: str) -> bool:
    """Whether ``given`` names the model an index records (a local folder by any path to it, a hub model by
    its alias)."""
    from .models import ALIASES

    name = os.fspath(given)
    if os.path.isdir(name):
        return os.path.realpath(name) == os.path.realpath(recorded)
    return ALIASES.get(name.lower(), name) == recorded


def recorded_manifest(index_dir: Path) -> dict[str, Any]:
    """The index's manifest, or {} where there is none or it cannot be read (the run then says why, in its
    place: a run log is written for it)."""
    try:
        return (IndexStore(index_dir).read_manifest() or {}) if (index_dir / MANIFEST).exists() else {}
    except (UniteError, OSError):
        return {}


def scan_stamp(found) -> str:
    """A digest of what the walk found: every file's path, size, mtime and kind (what the read stage's
    cache trusts a file by), and what this version reads of them (an index stamped by an earlier edition
    is no no-op: its rerun reads again what that edition read otherwise)."""
    h = hashlib.sha256(f"reads {READS}\n".encode())
    for e in sorted(found.entries, key=lambda e: e.rel):
        h.update(f"{e.rel}\0{e.size}\0{e.mtime_ns}\0{e.kind}\n".encode())
    return h.hexdigest()


def unchanged(report: IngestReport, store: IndexStore, settings, options, root: str, found, indexing) -> bool:
    """Whether the published index already holds exactly this corpus, as the last clean run left it: the
    same files (by path, size and mtime), options and model, every FAISS file sound. Then the run is done
    without opening a table or loading the model (fills ``report``)."""
    manifest = store.read_manifest()
    if manifest is None or found.failures or (store.path / WRITING).exists():
        return False  # new, or files the walk could not read, or a run stopped before it published
    if indexing_options(manifest) != indexing:
        return False  # index kinds to choose again, or the index to record what it was given
    scan = manifest.get("scan") or {}
    if scan.get("stamp") != scan_stamp(found):
        return False
    store.check(manifest, settings, options.to_dict(), root)  # another model or settings: refused as ever
    if manifest["encoder"] != settings or store.needs_repair(manifest):
        return False  # the weights' folder moved (recorded by a publish), or a FAISS file needs rebuilding
    report.items = report.unchanged_items = int(scan.get("items", 0))
    report.skipped, report.ignored_files = found.skipped, found.ignored
    report.shards = {s: e["rows"] for s, e in manifest.get("shards", {}).items()}
    report.status = OK
    return True


def indexing_options(recorded: dict[str, Any], flat_max=None, index_memory=None, allow_outside=None) -> dict[str, Any]:
    """``flat_max``, ``index_memory`` and ``allow_outside``: those given, else the index's own, else the defaults
    (``index_memory`` None: half the RAM of the machine that publishes). An index published before they were
    recorded: its shards' indexes say the ``flat_max`` they were built with."""
    own = recorded.get("indexing")
    if not isinstance(own, dict):
        limits = {(e.get("index") or {}).get("flat_max") for e in (recorded.get("shards") or {}).values()}
        own = {"flat_max": limits.pop()} if len(limits) == 1 and None not in limits else {}
    whole = isinstance(flat_max, numbers.Integral) and not isinstance(flat_max, bool)
    if flat_max is not None and not (whole and flat_max >= 1):
        raise ConfigError(f"flat_max must be a whole number of rows, at least 1, not {flat_max!r}")
    return {
        "flat_max": int(own.get("flat_max", ann.FLAT_MAX) if flat_max is None else flat_max),
        "index_memory": own.get("index_memory") if index_memory is None else int(index_memory),
        "allow_outside": bool(own.get("allow_outside", False) if allow_outside is None else allow_outside),
    }
