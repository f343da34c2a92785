"""Publishing: compact the changed shards, build their FAISS files, then replace the manifest.

The order is the crash guarantee. Until the manifest is replaced, readers (and a crashed run's
successor) see the previous state, whose table versions and FAISS files are still on disk: they are
kept until no kept state names them (see :func:`unite_search.manifest.kept_states`). Each FAISS
file's size and sha256 go into the manifest, so a reader can tell a damaged or swapped file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as manifests
from .diskio import file_sha256, remove_stale_temporaries
from .errors import UniteError
from .schema import table_name
from .tables import READ_BATCH, ShardTables

FAISS_DIR = "faiss"


def _batches(table, dim: int):
    def gen():
        for batch in table.search().select(["key", "vector"]).limit(None).to_batches(READ_BATCH):
            keys = batch.column("key").to_numpy().astype(np.int64)
            vecs = np.asarray(batch.column("vector").flatten().to_numpy(), dtype=np.float32).reshape(-1, dim)
            yield keys, np.ascontiguousarray(vecs)

    return gen


def faiss_entry(folder: Path, rel: str) -> dict[str, Any]:
    """What a reader checks a FAISS file against (size, sha256), and the stat the writer trusts until it changes."""
    path = folder / rel
    stat = manifests.file_stat(path)
    return {"faiss": rel, "faiss_bytes": stat[0], "faiss_sha256": file_sha256(path), "faiss_stat": stat}


def publish(
    folder: Path,
    tables: ShardTables,
    manifest: dict[str, Any],
    shards: Iterable[str],
    *,
    flat_max: int,
    gpu: bool | str = "auto",
) -> dict[str, Any]:
    """Publish the given shards at their latest table version; returns the new manifest (written)."""
    from . import ann

    shards = sorted(shards)
    dim = int(manifest["encoder"]["dim"])
    at = time.time()
    kept = manifests.kept_states(manifest, at)
    (folder / FAISS_DIR).mkdir(exist_ok=True)
    new = {**manifest, "shards": dict(manifest.get("shards", {}))}
    for shard in shards:
        keep = [s["shards"][shard]["version"] for s in kept if shard in s["shards"]]
        version = tables.compact(shard, keep)
        pinned = tables.open(shard, version)
        n = pinned.count_rows()
        index, info = ann.build(_batches(pinned, dim), n, dim, flat_max=flat_max, gpu=gpu)
        if index.ntotal != n:
            raise UniteError(f"shard {shard}: FAISS holds {index.ntotal} vectors, the table {n}")
        rel = f"{FAISS_DIR}/{table_name(shard)}.v{version}.faiss"
        ann.write(index, folder / rel)
        entry = {"table": table_name(shard), "version": version, "rows": n, "dim": dim}
        new["shards"][shard] = {**entry, **faiss_entry(folder, rel), "index": info}
    new["format"] = manifests.FORMAT
    new["serial"] = int(manifest.get("serial", 0)) + 1  # tells readers a newer state replaced theirs
    new["published"] = manifests.now()
    new["history"] = kept
    new["versions"] = manifests.library_versions()
    manifests.write(folder, new)
    prune_faiss(folder, [manifests.state(new), *kept])
    return new


def prune_faiss(folder: Path, states: list[dict[str, Any]]) -> list[str]:
    """Delete FAISS files (and temporaries of killed writers) that no kept state names."""
    faiss_dir = folder / FAISS_DIR
    if not faiss_dir.is_dir():
        return []
    remove_stale_temporaries(faiss_dir)
    live = {entry["faiss"] for s in states for entry in s["shards"].values()}
    removed = []
    for path in faiss_dir.glob("*.faiss"):
        rel = f"{FAISS_DIR}/{path.name}"
        if rel not in live:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(rel)
    return removed


def needs_repair(folder: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Published shards whose FAISS file is missing, damaged or unchecked (format 1), with the reason.

    Runs before every ingest, so a file whose stat is unchanged since it was written is not hashed again.
    """
    shards = manifest.get("shards", {})
    found = {shard: manifests.faiss_problem(folder, entry, trust_stat=True) for shard, entry in shards.items()}
    return {shard: why for shard, why in found.items() if why is not None}


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not os.path.islink(f))
