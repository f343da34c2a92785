"""Publishing: compact the changed shards, build their FAISS files, then replace the manifest.

A shard published before is not rebuilt. While an IVF shard's changes since its base file are under
:data:`unite_search.ann.DELTA_MAX` of it, the base stays and the changes go beside it (a delta index of
the rows added, a ``.npy`` of the ids removed; the previous delta index is carried forward, so only the
rows added since the last publish are read and assigned); past that, or for an exact shard, the previous index
is updated (``remove_ids``, ``add_with_ids`` on the trained index) and written as the new base. It is
built anew (k-means, nprobe tuning) only when :func:`unite_search.ann.rebuild_reason` says so, when an
IVF rewrite's recall@10 on its new rows falls under the target, or when a file is missing or damaged.
Each entry's ``index`` says how it was made (``built``: full, delta or updated).

The order is the crash guarantee. Until the manifest is replaced, readers (and a crashed run's
successor) see the previous state, whose table versions and FAISS files are still on disk: they are
kept until no kept state names them (see :func:`unite_search.manifest.kept_states`). Each FAISS
file's size and sha256 go into the manifest, so a reader can tell a damaged or swapped file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as manifests
from .diskio import file_sha256, remove_stale_temporaries, write_atomic
from .errors import IndexDamagedError, UniteError
from .schema import table_name
from .tables import READ_BATCH, ShardTables, record_files

FAISS_DIR = "faiss"
REUSE_DELTA = True  # a delta publish adds to the previous state's delta index (False: rebuilt from the rows)


def _batches(table, dim: int):
    def gen():
        for batch in table.search().select(["key", "vector"]).limit(None).to_batches(READ_BATCH):
            keys = batch.column("key").to_numpy().astype(np.int64)
            vecs = np.asarray(batch.column("vector").flatten().to_numpy(), dtype=np.float32).reshape(-1, dim)
            yield keys, np.ascontiguousarray(vecs)

    return gen


def _keys(table) -> np.ndarray:
    """Every row's key in the table's row order (a row's position is its offset for :func:`_rows_at`)."""
    batches = table.search().select(["key"]).limit(None).to_batches(READ_BATCH)
    parts = [b.column("key").to_numpy().astype(np.int64) for b in batches]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _within(values: np.ndarray, sorted_pool: np.ndarray) -> np.ndarray:
    """For each value, whether it is in ``sorted_pool`` (a sorted int64 array): a binary search each."""
    if not len(sorted_pool):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_pool, values), len(sorted_pool) - 1)
    return sorted_pool[at] == values


def _diff(keys: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids of ``held`` the table's ``keys`` lack, sorted; row offsets of the keys ``held`` lacks, ascending).

    Both sides are searched in sorted order: keys in row order are hashes, and a binary search for each
    of 10M of them misses the cache at every step (7.7 s at 10M rows, against ~1 s sorted first)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    removed = held[~_within(held, sorted_keys)]
    added = np.sort(order[~_within(sorted_keys, held)])
    return removed, added


def _rows_at(table, offsets: np.ndarray, keys: np.ndarray, dim: int, chunk: int = 16384):
    """(keys, vectors) of the rows at these ascending offsets, a chunk at a time; ``keys`` are the keys
    the table holds at them (checked: the pinned version cannot change, so a difference is damage).

    Read through the pinned version's Lance dataset where pylance can: runs of consecutive offsets (rows
    appended together) by a scan from the run's start, the scattered rest by ``take``. At 10M rows,
    16,384 rows of the last fragment took 9.5 s by ``take`` (10.7 s by LanceDB's ``take_offsets``) and
    0.03 s by a scan. Without a dataset, LanceDB reads them."""
    try:
        dataset = table.to_lance()
    except Exception:  # noqa: BLE001  no pylance, or one too old for the table: LanceDB reads it
        dataset = None
    columns = ["key", "vector"]

    def read(part: np.ndarray):
        nonlocal dataset
        first, count = int(part[0]), len(part)
        if dataset is not None:
            try:
                if int(part[-1]) - first + 1 == count:
                    return dataset.to_table(columns=columns, offset=first, limit=count)
                return dataset.take([int(o) for o in part], columns=columns)
            except Exception:  # noqa: BLE001  judged below by LanceDB, which wrote the table
                dataset = None
        return table.take_offsets([int(o) for o in part]).select(columns).to_arrow()

    def pieces():
        runs = np.split(offsets, np.flatnonzero(np.diff(offsets) != 1) + 1) if len(offsets) else []
        scattered = np.concatenate([r for r in runs if len(r) < 64] or [np.empty(0, np.int64)])
        for run in [r for r in runs if len(r) >= 64]:
            for i in range(0, len(run), chunk):
                yield run[i : i + chunk]
        for i in range(0, len(scattered), chunk):
            yield scattered[i : i + chunk]

    for part in pieces():
        got = read(part)
        got_keys = got.column("key").to_numpy().astype(np.int64)
        if not np.array_equal(got_keys, keys[part]):
            raise IndexDamagedError(f"table version {table.version} returned other rows than asked by offset "
                                    f"(from {int(part[0])}); run ingest again to rebuild the index")  # fmt: skip
        vecs = np.asarray(got.column("vector").combine_chunks().flatten().to_numpy(), dtype=np.float32)
        yield got_keys, np.ascontiguousarray(vecs.reshape(-1, dim))


@dataclass
class _Delta:
    """A publish that leaves an IVF shard's base file as it is: the rows added since, in a small index
    of their own, and the ids removed since."""

    index: Any
    removed: np.ndarray  # sorted int64


def _update(
    folder: Path, old: dict[str, Any], pinned, n: int, dim: int, flat_max: int, memory: int | None, replaced: np.ndarray
):
    """The shard's previous index brought to the pinned table version: (index, info), (_Delta, info) or
    (None, why it must be built anew). ``replaced``: keys (sorted) whose rows were written again since,
    with other vectors: removed from the previous index and added anew, as the keys alone do not show."""
    from . import ann

    info = dict(old.get("index", {}))
    why = ann.rebuild_reason(info, n, dim, flat_max, memory) or manifests.faiss_problem(folder, old, trust_stat=True)
    if why is not None:
        return None, why
    ivf = info.get("type") == "ivf"
    try:
        base = ann.read(folder / old["faiss"], mmap=ivf)  # mapped: only its ids are read unless it is rewritten
    except RuntimeError as exc:
        return None, f"{old['faiss']} is unreadable ({exc})"
    base_rows = int(old.get("base_rows", old["rows"]))
    if base.ntotal != base_rows or base.d != dim:
        return None, f"{old['faiss']} holds {base.ntotal} vectors of dim {base.d}, not {base_rows} of {dim}"
    held = np.sort(ann.ids(base))
    keys = _keys(pinned)
    removed, added = _diff(keys, held)
    if "removed" in old:  # ids the base still holds, hidden since: in the table now, they are rows written anew
        hidden = read_ids(manifests.faiss_path(folder, old["removed"]["faiss"]))
        replaced = np.union1d(replaced, hidden)
    again = np.flatnonzero(_within(keys, replaced)) if len(replaced) else np.empty(0, np.int64)
    if len(again):  # offsets of the rows written again: out of the index under their key, then read anew
        removed = np.union1d(removed, held[_within(held, np.sort(keys[again]))])
        added = np.union1d(added, again)
    for key in ("fresh_recall", "rebuild_reason", "delta"):
        info.pop(key, None)
    if ivf and len(added) + len(removed) <= ann.DELTA_MAX * len(held):
        delta, dropped, to_read = _delta_start(folder, old, base, keys, added, replaced)
        kept = delta.ntotal - len(dropped)
        ann.update(delta, dropped, _rows_at(pinned, to_read, keys, dim))
        if len(held) - len(removed) + delta.ntotal != n:
            return None, f"base {len(held)} - removed {len(removed)} + added {delta.ntotal} is not the table's {n}"
        info.update(built="delta", delta={"added": int(delta.ntotal), "removed": len(removed), "kept": int(kept)})
        return _Delta(delta, removed), info
    if ivf:
        base = ann.read(folder / old["faiss"])  # rewritten: loaded whole
    fresh: list[tuple[np.ndarray, np.ndarray]] = []
    rng = np.random.default_rng(int(old["version"]))
    pick = set(rng.choice(len(added), size=min(ann.FRESH_QUERIES, len(added)), replace=False).tolist())

    def batches():
        at = 0
        for keys_, vecs in _rows_at(pinned, added, keys, dim):
            mine = [i for i in range(len(keys_)) if at + i in pick]
            if mine:
                fresh.append((keys_[mine], vecs[mine]))
            at += len(keys_)
            yield keys_, vecs

    gone, count = ann.update(base, removed, batches())
    if base.ntotal != n:
        return None, f"the updated index holds {base.ntotal} vectors, the table {n} (keys repeated?)"
    since = dict(info.get("since_training") or {"publishes": 0, "added": 0, "removed": 0})
    since = {"publishes": since["publishes"] + 1, "added": since["added"] + count, "removed": since["removed"] + gone}
    info.update(built="updated", last_update={"added": count, "removed": gone}, since_training=since)
    if ivf and count >= ann.FRESH_MIN:
        queries = np.concatenate([v for _, v in fresh])
        width = ann.RECALL_K * int(info.get("rerank") or 1)
        keys_ = np.concatenate([k for k, _ in fresh])
        recall = ann.fresh_recall(base, queries, keys_, int(info["nprobe"]), candidates=width)
        info["fresh_recall"] = {"recall_at_10": round(recall, 4), "queries": len(queries)}
        target = ann.TARGET_RECALL
        if recall < target:
            return None, f"recall@10 on {len(queries)} newly added rows is {recall:.3f}, under {target}"
    return base, info


def _delta_start(folder: Path, old: dict[str, Any], base, keys: np.ndarray, added: np.ndarray, replaced: np.ndarray):
    """(delta index to add to, ids to remove from it, offsets of the rows to add) for a delta publish.

    The previous state's delta index, when it has one (its files were checked with the base's): the
    rows it holds that are still added since the base, and not ``replaced``, stay; the others are
    removed from it, and only the rows it lacks (or holds replaced) are read and assigned to lists.
    Else an empty copy of the base's trained index, every row added since the base to be read."""
    from . import ann

    if REUSE_DELTA and "delta" in old:
        try:
            previous = ann.read(folder / old["delta"]["faiss"])
        except RuntimeError:
            previous = None
        if previous is not None and ann.same_trained(previous, base):
            have = np.sort(ann.ids(previous))
            added_keys = keys[added]
            stale = _within(have, replaced)
            dropped = have[~_within(have, np.sort(added_keys)) | stale]
            return previous, dropped, added[~_within(added_keys, have[~stale])]
    # the mapped base, its lists swapped for empty ones (its file untouched)
    return ann.empty_like(base), np.empty(0, np.int64), added


def _must_build(old: dict[str, Any] | None, version: int, incremental: bool) -> str | None:
    """Why a shard's index is built anew whatever its size (None: try updating the previous one)."""
    if old is None:
        return "a new shard"
    if not incremental:
        return "a full build was asked for"
    if old["version"] == version:  # the table did not move: its FAISS file is being repaired
        return "repairing its FAISS file"
    return None


def faiss_entry(folder: Path, rel: str, sha256: str | None = None) -> dict[str, Any]:
    """What a reader checks a FAISS file against (size, sha256), and the stat the writer trusts until it changes."""
    path = folder / rel
    stat = manifests.file_stat(path)
    return {"faiss": rel, "faiss_bytes": stat[0], "faiss_sha256": sha256 or file_sha256(path), "faiss_stat": stat}


def publish(
    folder: Path,
    tables: ShardTables,
    manifest: dict[str, Any],
    shards: Iterable[str],
    *,
    flat_max: int,
    memory: int | None = None,
    gpu: bool | str = "auto",
    incremental: bool = True,
    replaced: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Publish the given shards at their latest table version; returns the new manifest (written).

    ``replaced``: by shard, the keys whose rows were deleted and written again with other vectors since
    the last publish (under one key, so a diff of keys cannot see them; ingest records them).

    ``memory``: bytes one shard's index may hold (default: :func:`unite_search.ann.default_memory`), which
    with ``flat_max`` picks its kind (:func:`unite_search.ann.choose`). ``incremental=False`` builds every
    given shard's index anew."""
    from . import ann

    shards = sorted(shards)
    dim = int(manifest["encoder"]["dim"])
    at = time.time()
    kept = manifests.kept_states(manifest, at)
    (folder / FAISS_DIR).mkdir(exist_ok=True)
    new = {**manifest, "shards": dict(manifest.get("shards", {}))}
    for shard in shards:
        keep = [s["shards"][shard]["version"] for s in kept if shard in s["shards"]]
        old = manifest.get("shards", {}).get(shard)
        version = tables.compact(shard, keep, always=old is None or not incremental)
        pinned = tables.open(shard, version)
        n = pinned.count_rows()
        index, why = None, _must_build(old, version, incremental)
        if why is None:
            again = np.unique(np.fromiter((replaced or {}).get(shard, ()), np.int64))
            index, info = _update(folder, old, pinned, n, dim, flat_max, memory, again)
            why = info if index is None else None
        if index is None:
            index, info = ann.build(_batches(pinned, dim), n, dim, flat_max=flat_max, memory=memory, gpu=gpu)
            info = {**info, "built": "full", "rebuild_reason": why}
        entry = {"table": table_name(shard), "version": version, "rows": n, "dim": dim}
        entry["lance_files"] = record_files(pinned, (old or {}).get("lance_files"))  # what verify checks
        stem = f"{FAISS_DIR}/{table_name(shard)}.v{version}"
        if isinstance(index, _Delta):  # the base file stays; the changes since it go beside it
            base = {k: old[k] for k in ("faiss", "faiss_bytes", "faiss_sha256", "faiss_stat")}
            entry.update(base, base_rows=int(old.get("base_rows", old["rows"])))
            entry["delta"] = faiss_entry(
                folder, f"{stem}.delta.faiss", ann.write(index.index, folder / f"{stem}.delta.faiss")
            )
            if len(index.removed):
                entry["removed"] = faiss_entry(
                    folder, f"{stem}.removed.npy", _write_ids(index.removed, folder / f"{stem}.removed.npy")
                )
            new["shards"][shard] = {**entry, "index": info}
            continue
        if index.ntotal != n:
            raise UniteError(f"shard {shard}: FAISS holds {index.ntotal} vectors, the table {n}")
        sha256 = ann.write(index, folder / f"{stem}.faiss")
        new["shards"][shard] = {**entry, **faiss_entry(folder, f"{stem}.faiss", sha256), "index": info}
    new["format"] = manifests.FORMAT
    new["serial"] = int(manifest.get("serial", 0)) + 1  # tells readers a newer state replaced theirs
    new["published"] = manifests.now()
    new["history"] = kept
    new["versions"] = manifests.library_versions()
    manifests.write(folder, new)
    prune_faiss(folder, [manifests.state(new), *kept])
    return new


def _write_ids(ids: np.ndarray, path: Path) -> str:
    """Write ids as a .npy file (int64, no pickle) atomically; returns its sha256."""
    import hashlib
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(ids, dtype=np.int64), allow_pickle=False)
    data = buf.getvalue()
    write_atomic(path, lambda fh: fh.write(data), binary=True)
    return hashlib.sha256(data).hexdigest()


def read_ids(path: Path) -> np.ndarray:
    """The ids a ``.removed.npy`` file holds (checked against the manifest before)."""
    return np.load(path, allow_pickle=False).astype(np.int64, copy=False)


def prune_faiss(folder: Path, states: list[dict[str, Any]]) -> list[str]:
    """Delete FAISS files (and temporaries of killed writers) that no kept state names."""
    faiss_dir = folder / FAISS_DIR
    if not faiss_dir.is_dir():
        return []
    remove_stale_temporaries(faiss_dir)
    live = {rel for s in states for entry in s["shards"].values() for rel in manifests.files_of(entry)}
    removed = []
    for path in [*faiss_dir.glob("*.faiss"), *faiss_dir.glob("*.npy")]:
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
