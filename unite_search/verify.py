"""``unite-search info --verify``: check every file the manifest names, without trusting any of them.

For each published shard: the FAISS file's size and sha256 against the manifest, that it loads
with the recorded row count and dim; the table version is present, its files (data, deletions,
indexes) are the ones published with their sizes and sha256, and every column of every row
reads; the table's keys are exactly the FAISS ids and each stored vector equals its FAISS copy (an index of
SQ8, SQ4 or PQ codes holds no copy: its ids are checked).
For the earlier states the manifest still keeps (``history``), their FAISS files and table
versions are present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as manifests
from .diskio import brief
from .errors import UniteError
from .tables import READ_BATCH, ShardTables, file_problems

TOLERANCE = 1e-6


@dataclass
class Verification:
    """What ``verify`` checked (``ok``) and what it found damaged (``problems``), per shard."""

    index: str
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    outdated: str | None = None  # manifest.outdated: intact, but to be rebuilt rather than repaired

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "damaged": self.damaged, "outdated": self.outdated, "ok": self.ok,
                "problems": self.problems}  # fmt: skip


def verify(folder: str | Path) -> Verification:
    """Check an index's files against its manifest; see the module docstring."""
    folder = Path(folder)
    out = Verification(str(folder))
    try:
        manifest = manifests.require(folder)
    except UniteError as exc:
        out.problems.append(str(exc))
        return out
    out.outdated = manifests.outdated(manifest)
    tables = ShardTables(folder / "tables")
    for shard, entry in sorted(manifest["shards"].items()):
        before = len(out.problems)
        faiss_ids = _check_faiss(folder, shard, entry, out)
        _check_table(tables, shard, entry, faiss_ids, out)
        if len(out.problems) == before:
            out.ok.append(f"shard {shard}: {entry['rows']} rows, table version {entry['version']}, {entry['faiss']}")
    for state in manifest.get("history", []):
        for shard, kept in sorted(state["shards"].items()):
            _check_kept(folder, tables, shard, kept, state["published"], out)
    return out


def _check_faiss(folder: Path, shard: str, entry: dict[str, Any], out: Verification):
    from . import ann
    from .publish import read_ids

    problem = manifests.faiss_problem(folder, entry)  # a file named outside faiss/ is a problem, never read
    if problem is not None:
        out.problems.append(f"shard {shard}: {problem}")
        return None
    path = manifests.faiss_path(folder, entry["faiss"])
    try:
        index = ann.read(path, mmap="delta" in entry)
        delta = ann.read(manifests.faiss_path(folder, entry["delta"]["faiss"])) if "delta" in entry else None
        removed = (
            read_ids(manifests.faiss_path(folder, entry["removed"]["faiss"]))
            if "removed" in entry
            else np.empty(0, np.int64)
        )
    except (RuntimeError, ValueError) as exc:
        out.problems.append(f"{path}: unreadable ({brief(exc)})")
        return None
    added = delta.ntotal if delta is not None else 0
    if index.ntotal - len(removed) + added != entry["rows"] or index.d != entry.get("dim", index.d):
        out.problems.append(
            f"{path}: {index.ntotal} vectors of dim {index.d} (+{added} -{len(removed)} since), "
            f"the manifest says {entry['rows']}"
        )
        return None
    parts = [index] if delta is None else [index, delta]
    if not ann.stores_vectors(index):  # SQ8 / SQ4 / PQ codes: ids are checked, vectors live in the table only
        ids = [ann.ids(one) for one in parts]
        vecs = None
    else:
        ids, vecs = zip(*(ann.stored(one) for one in parts), strict=True)
    live = ~np.isin(ids[0], removed)  # the base's ids removed since it was written
    if live.sum() != index.ntotal - len(removed):
        out.problems.append(f"shard {shard}: {entry['removed']['faiss']} names ids its base index does not hold")
        return None
    all_ids = np.concatenate([ids[0][live], *ids[1:]])
    return all_ids, (np.concatenate([vecs[0][live], *vecs[1:]]) if vecs is not None else None)


def _check_table(tables: ShardTables, shard: str, entry: dict[str, Any], faiss_ids, out: Verification) -> None:
    where = f"shard {shard} table version {entry['version']}"
    try:
        table = tables.open(shard, entry["version"])
        keys, vecs = [], []
        for batch in table.search().limit(None).to_batches(READ_BATCH):  # every column of every row
            keys.append(batch.column("key").to_numpy())
            flat = batch.column("vector").flatten().to_numpy()
            vecs.append(np.asarray(flat, dtype=np.float32).reshape(batch.num_rows, -1))
    except Exception as exc:  # noqa: BLE001  LanceDB raises ValueError, RuntimeError or OSError for missing files
        out.problems.append(f"{where}: unreadable ({brief(exc)})")
        return
    if "lance_files" in entry:  # recorded by each publish since; an older one's table is checked at its next
        out.problems += [f"{where}: {p}" for p in file_problems(table, entry["lance_files"])]
    keys_all = np.concatenate(keys) if keys else np.empty(0, np.int64)
    if len(keys_all) != entry["rows"]:
        out.problems.append(f"{where}: {len(keys_all)} rows, the manifest says {entry['rows']}")
        return
    if faiss_ids is None:
        return
    ids, stored = faiss_ids
    table_order, faiss_order = np.argsort(keys_all), np.argsort(ids)
    if not np.array_equal(keys_all[table_order], ids[faiss_order]):
        out.problems.append(f"{where}: its keys are not the FAISS file's ids")
        return
    if stored is None:
        return
    table_vecs = np.concatenate(vecs)[table_order] if vecs else np.empty((0, stored.shape[1]), np.float32)
    diff = float(np.abs(table_vecs - stored[faiss_order]).max()) if len(ids) else 0.0
    if diff > TOLERANCE:
        out.problems.append(f"{where}: stored vectors differ from the FAISS file's by up to {diff:.3g}")


def _check_kept(folder: Path, tables: ShardTables, shard: str, kept: dict[str, Any], published: str, out) -> None:
    where = f"earlier state of {published}, shard {shard}"
    problem = manifests.faiss_problem(folder, kept)
    if problem is not None:
        out.problems.append(f"{where}: {problem}")
    try:
        tables.open(shard, kept["version"]).count_rows()
    except Exception as exc:  # noqa: BLE001  see _check_table
        out.problems.append(f"{where}: table version {kept['version']} unreadable ({brief(exc)})")
