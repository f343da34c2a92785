"""``manifest.json``: an index's published state, and whether an encoder or a run may use the index.

The manifest is the commit point: a run publishes by replacing it atomically, and a reader uses
only what the one manifest it read names (each shard's table version and FAISS file, with the
file's size and sha256). Earlier published states that may still have readers are listed in
``history`` (the previous one, and any published in the last hour), and their files are kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from .diskio import write_json
from .errors import IndexDamagedError, IndexMismatchError, IndexNotFoundError, UniteError

FORMAT = 2  # 2: FAISS checksums, history of kept states
READABLE = (1, 2)  # a format-1 index is upgraded by its next ingest (its FAISS files get checksums)
MANIFEST = "manifest.json"
KEEP_RECENT_SECONDS = 3600  # states published this recently stay readable, whatever came after

# Encoder keys that may differ without changing a vector: where the weights live, not what they are
# (the revision, a fingerprint of the weights and the adapter, is their identity).
LOCATION_KEYS = ("model_id", "adapter")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(stamp: str) -> float:
    """Seconds since the epoch of a :func:`now` stamp."""
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("unite-search", "torch", "transformers", "lancedb", "pyarrow", "faiss-cpu", "faiss-gpu", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest of the index at ``folder``, or None when there is none. An index holding a symlink that
    leads out of its folder is refused (:func:`link_out`) before anything in it is read."""
    path = folder / MANIFEST
    link = link_out(folder)
    if link is not None:
        raise IndexDamagedError(
            f"{folder}: {link} is a symlink leading out of the index folder, and nothing outside the folder "
            "named is read; put the files it leads to in its place"
        )
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise UniteError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
        raise UniteError(f"{path}: not a unite-search manifest")
    damage = _shape_damage(manifest)
    if damage:
        raise IndexDamagedError(f"{path}: {damage}; the manifest was edited or damaged")
    return manifest


LINKABLE = (MANIFEST, "faiss", "thumbs")  # ... and tables/ and runs/, with everything under them


def link_out(folder: Path) -> str | None:
    """The first path of an index that is a symlink leading out of its folder (as ``folder``-relative), or None.

    Looked at: ``manifest.json``, the ``faiss/`` and ``thumbs/`` folders (their files are checked where they
    are read), ``tables/`` with every file and folder under it, since Lance reads whichever file a table's
    version names, and ``runs/`` with its run logs (``info`` and the server's ``/info`` show the latest).
    One ``scandir`` a folder: only a link costs a ``realpath``.
    """
    root = os.path.realpath(folder)

    def leads_out(path: str) -> bool:
        real = os.path.realpath(path)
        return real == root or os.path.commonpath([root, real]) != root

    walked = ("tables", "runs")
    for name in (*LINKABLE, *walked):
        if os.path.islink(os.path.join(root, name)) and leads_out(os.path.join(root, name)):
            return name
    stack = [os.path.join(root, name) for name in walked]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.is_symlink():
                    if leads_out(entry.path):
                        return os.path.relpath(entry.path, root)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return None


def _shape_damage(manifest: dict[str, Any]) -> str | None:
    """What in a manifest's sections is not of the kind every version writes, or None."""
    if not isinstance(manifest.get("encoder"), dict) or not isinstance(manifest.get("ingest", {}), dict):
        return "its encoder or ingest section is missing or not an object"
    for name, entry in manifest["shards"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("faiss"), str):
            return f"shard {name!r} has no FAISS file named"
        for part in DELTA_PARTS:
            if part in entry and (not isinstance(entry[part], dict) or not isinstance(entry[part].get("faiss"), str)):
                return f"shard {name!r} names its {part} part without a file"
    return None


def require(folder: Path) -> dict[str, Any]:
    manifest = read(folder)
    if manifest is None:
        raise IndexNotFoundError(f"{folder} holds no unite-search index (no {MANIFEST})")
    if manifest.get("format") not in READABLE:
        raise IndexMismatchError(
            f"{folder}: index format {manifest.get('format')}; this version of unite-search reads {READABLE}"
        )
    return manifest


def write(folder: Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = now()
    write_json(folder / MANIFEST, manifest)


def new(encoder: dict[str, Any], ingest: dict[str, Any], corpus: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "created": now(),
        "corpus": corpus,
        "encoder": encoder,
        "ingest": ingest,
        "metric": "cosine (inner product of L2-normalised vectors)",
        "shards": {},
        "history": [],
        "versions": library_versions(),
    }


def outdated(manifest: dict[str, Any]) -> str | None:
    """Why no encoder of this version can add to or query an index an earlier version built, or None."""
    from .settings import RULES

    missing = [key for key in RULES if key not in manifest.get("encoder", {})]
    if not missing:
        return None
    return (
        "built by an earlier version of unite-search, before texts and video frames were prepared as UNITE "
        f"prepares them (it records no {' or '.join(missing)}): its vectors and this version's are not comparable"
    )


def check(
    folder: Path,
    manifest: dict[str, Any],
    encoder: dict[str, Any],
    ingest: dict[str, Any],
    corpus: str,
    hint: str | None = None,
) -> None:
    """Refuse an encoder or run whose vectors would not be comparable with the index's, naming each difference."""
    rebuild = hint or f"To rebuild, remove the index (rm -r {folder}) or pass another --index."
    if manifest.get("format") not in READABLE:
        raise IndexMismatchError(f"{folder}: index format {manifest.get('format')}, this version writes {FORMAT}")
    why = outdated(manifest)
    if why is not None:  # whatever the model: no encoder of this version makes its vectors
        raise IndexMismatchError(f"{folder} was {why}. To rebuild it, remove it (rm -r {folder}), then ingest.")
    recorded = manifest.get("corpus")
    if recorded != corpus and (recorded is None or os.path.realpath(recorded) != os.path.realpath(corpus)):
        raise IndexMismatchError(
            f"{folder} indexes the corpus {manifest.get('corpus')}, not {corpus}; ingesting here would "
            f"remove every row of the other corpus. {rebuild}"
        )
    diffs = []
    old_enc = {k: v for k, v in manifest.get("encoder", {}).items() if k not in LOCATION_KEYS}
    new_enc = {k: v for k, v in encoder.items() if k not in LOCATION_KEYS}
    if old_enc.get("revision") != new_enc.get("revision") and str(old_enc.get("revision")).startswith("local-"):
        from .models import legacy_revision

        if legacy_revision(encoder) == old_enc["revision"]:  # the same folder, named by the identity rule of then
            old_enc["revision"] = new_enc["revision"]
    for section, old, new_ in (("encoder", old_enc, new_enc), ("ingest", manifest.get("ingest", {}), ingest)):
        for key in sorted(set(old) | set(new_)):
            if old.get(key) != new_.get(key):
                diffs.append(f"{section}.{key}: index has {old.get(key)!r}, this run {new_.get(key)!r}")
    if diffs:
        model = manifest.get("encoder", {}).get("model_id")
        raise IndexMismatchError(
            f"{folder} was built with another model or settings (model {model}); vectors would not be "
            "comparable:\n  " + "\n  ".join(diffs) + f"\n{rebuild}"
        )


def file_stat(path: Path) -> list[int]:
    """What changes whenever a file's bytes do: size, mtime, ctime, inode (ctime cannot be set back)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


DELTA_PARTS = ("delta", "removed")  # files a shard entry may name beside its base FAISS file


def files_of(entry: dict[str, Any]) -> list[str]:
    """Every file under ``faiss/`` a shard entry names: the base index, and its delta parts if any."""
    return [entry["faiss"], *(entry[part]["faiss"] for part in DELTA_PARTS if part in entry)]


def faiss_path(folder: Path, rel: Any) -> Path:
    """The file a manifest names (``rel``, as in :func:`files_of`), refused as damage unless it is ``faiss/<name>``
    and its real path, symlinks followed, stays in the index's ``faiss/`` folder."""
    problem = _outside(folder, rel)
    if problem is not None:
        raise IndexDamagedError(f"{folder}: {problem}")
    return folder / rel


def _outside(folder: Path, rel: Any) -> str | None:
    """Why ``rel`` does not name a file of ``folder``'s ``faiss/`` folder, or None. Nothing outside is looked at."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if len(parts) != 2 or parts[0] != "faiss" or parts[1] in ("", ".", "..") or "\\" in rel or "\0" in rel:
        return f"the manifest names {rel!r}, not a file of the index's faiss/ folder"
    root, real = os.path.realpath(folder / "faiss"), os.path.realpath(folder / rel)
    if real == root or os.path.commonpath([root, real]) != root:
        return f"{rel} is a link out of the index's faiss/ folder"
    return None


def faiss_problem(folder: Path, entry: dict[str, Any], *, trust_stat: bool = False) -> str | None:
    """What is wrong with the files a shard entry names (missing, size, sha256): its FAISS file and, after
    a delta publish, the delta index and the removed ids beside it; or None.

    ``trust_stat`` skips hashing a file whose stat is still the one recorded when it was written
    (the writer's cheap check before each run); readers and ``--verify`` always hash.
    """
    for part in DELTA_PARTS:
        if part in entry:
            problem = _file_problem(folder, entry[part], trust_stat)
            if problem is not None:
                return problem
    return _file_problem(folder, entry, trust_stat)


def _file_problem(folder: Path, entry: dict[str, Any], trust_stat: bool) -> str | None:
    from .diskio import file_sha256

    rel = entry["faiss"]
    outside = _outside(folder, rel)
    if outside is not None:
        return outside
    path = folder / rel
    if "faiss_sha256" not in entry:
        return f"{rel} has no recorded checksum (index built by an older unite-search)"
    if not path.is_file():
        return f"{rel} is missing"
    size = path.stat().st_size
    if size != entry["faiss_bytes"]:
        return f"{rel} is {size} bytes, the manifest records {entry['faiss_bytes']} (truncated or replaced)"
    if trust_stat and entry.get("faiss_stat") == file_stat(path):
        return None
    if file_sha256(path) != entry["faiss_sha256"]:
        return f"{rel} does not match its recorded sha256 (damaged or replaced)"
    return None


def published_state(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what a rerun that publishes nothing rewrites (``scan``, ``updated``): equal for one
    published state, unequal for another, also for an index built again in place within the same second
    (serial 1 again, and ``created`` in whole seconds)."""
    return {key: value for key, value in manifest.items() if key not in ("scan", "updated")}


def state(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a published manifest names on disk: its time and, per shard, the table version and FAISS file."""
    keys = ("version", "faiss", "faiss_bytes", "faiss_sha256", *DELTA_PARTS)
    shards = {name: {k: e[k] for k in keys if k in e} for name, e in manifest.get("shards", {}).items()}
    return {"published": manifest.get("published") or manifest.get("updated") or now(), "shards": shards}


def kept_states(manifest: dict[str, Any], at: float) -> list[dict[str, Any]]:
    """The states whose files must stay on disk once ``manifest`` is replaced at time ``at``: ``manifest``'s
    own (it becomes the previous one) and those of its history published within ``KEEP_RECENT_SECONDS``."""
    states = [state(manifest)] if manifest.get("shards") else []
    for old in manifest.get("history", []):
        if at - parse_time(old["published"]) <= KEEP_RECENT_SECONDS:
            states.append(old)
    return states
