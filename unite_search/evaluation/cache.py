"""An on-disk cache of embeddings keyed by model, settings and item content.

A rerun costs nothing and a crash mid-benchmark loses at most the chunk being encoded: vectors are
written chunk by chunk, ``chunk-<uuid>.npy`` then ``chunk-<uuid>.json`` with its keys, each through a
temporary file and ``os.replace``; a chunk without its key file is ignored. Chunk names are unique, so
runs sharing one cache (processes, or instances in one process) never overwrite each other, and a run
looks for chunks written by the others before encoding an item it has not seen. A damaged chunk (its
vectors unreadable, not one per key, or not all finite) is skipped with a warning and its items are
encoded again.
Chunks named ``chunk-N`` by older versions are read as well. Items are keyed by their text and the
sha256 of their media files.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..diskio import cache_home, file_sha256, write_atomic


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/unite-search/embeddings`` (``~/.cache/...`` by default), where the other caches are."""
    return cache_home() / "embeddings"


CHUNK = 256


def _file_sha(path: str, memo: dict[tuple[str, int, int], str]) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in memo:
        memo[key] = file_sha256(path)
    return memo[key]


def _rows(npy: Path) -> int:
    """Rows of a saved ``(n, dim)`` float32 array, checked against the file size without loading it."""
    with open(npy, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)  # (n, dim)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"has .npy format version {version}, which this cache never writes")
        header = fh.tell()
    if dtype != np.float32 or fortran or len(shape) != 2:
        raise ValueError(f"holds a {dtype} array of shape {shape}, not (n, dim) float32")
    expected = header + shape[0] * shape[1] * dtype.itemsize
    size = npy.stat().st_size
    if size != expected:
        raise ValueError(f"is {size} bytes where its header promises {expected} (truncated?)")
    return shape[0]


class EmbeddingCache:
    """Vectors of one encoder (model revision + settings) under ``root``."""

    def __init__(self, root: str | os.PathLike, settings: dict[str, Any], chunk: int = CHUNK):
        self.chunk = chunk
        text = json.dumps(settings, indent=2, sort_keys=True)
        namespace = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root).expanduser() / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "settings.json", lambda fh: fh.write(text), fsync=False)
        self._where: dict[str, tuple[str, int]] = {}  # key -> (chunk name, row)
        self._scanned: set[str] = set()  # chunk names whose key file was read (good or damaged)
        self._chunks: dict[str, np.ndarray] = {}
        self._memo: dict[tuple[str, int, int], str] = {}
        self.encoded = 0  # items encoded by this instance (0 on a fully cached rerun)
        self._scan()

    def _scan(self) -> None:
        """Adds the chunks whose key file appeared since the last scan (this run's or another's)."""
        for keys_file in sorted(self.dir.glob("chunk-*.json")):
            name = keys_file.stem
            if name in self._scanned:
                continue
            self._scanned.add(name)
            try:
                keys = json.loads(keys_file.read_text())
                if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                    raise ValueError("its key file is not a list of keys")
                rows = _rows(self.dir / f"{name}.npy")
                if rows != len(keys):
                    raise ValueError(f"holds {rows} vectors for {len(keys)} keys")
            except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
                self._damaged(name, str(exc))
                continue
            for row, key in enumerate(keys):
                self._where.setdefault(key, (name, row))  # a key cached twice: keep the vector already served

    def key(self, item: dict[str, Any]) -> str:
        content = {k: item.get(k) for k in ("text", "instruction")}
        for media in ("image", "video"):
            if item.get(media) is not None:
                content[media] = _file_sha(str(item[media]), self._memo)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def _damaged(self, name: str, why: str) -> None:
        warnings.warn(
            f"ignoring damaged embedding cache chunk {self.dir / name}.npy: {why}; its items will be "
            f"encoded again (delete {name}.npy and {name}.json to stop this warning)",
            RuntimeWarning,
            stacklevel=4,
        )

    def _open(self, name: str) -> bool:
        """Loads a chunk once, checking its values; a damaged one's keys are forgotten (False)."""
        if name not in self._chunks:
            try:
                vecs = np.load(self.dir / f"{name}.npy", mmap_mode="r")
                finite = bool(np.isfinite(vecs).all())
            except (OSError, ValueError) as exc:
                finite, why = False, str(exc)
            else:
                why = "it holds vectors that are not finite (NaN or infinity)"
            if not finite:
                self._damaged(name, why)
                self._where = {k: at for k, at in self._where.items() if at[0] != name}
                return False
            self._chunks[name] = vecs
        return True

    def _cached(self, key: str) -> bool:
        return key in self._where and self._open(self._where[key][0])

    def _vector(self, name: str, row: int) -> np.ndarray:
        return self._chunks[name][row]

    def _save(self, keys: list[str], vecs: np.ndarray) -> None:
        name = f"chunk-{uuid.uuid4().hex}"
        # vectors first: the key file makes the chunk visible, so no reader sees keys without vectors
        write_atomic(self.dir / f"{name}.npy", lambda fh: np.save(fh, vecs), binary=True, fsync=False)
        write_atomic(self.dir / f"{name}.json", lambda fh: fh.write(json.dumps(keys)), fsync=False)
        self._scanned.add(name)
        for row, key in enumerate(keys):
            self._where.setdefault(key, (name, row))

    def embed(
        self, items: Sequence[dict[str, Any]], encode: Callable[[list[dict[str, Any]]], np.ndarray], progress=None
    ) -> np.ndarray:
        """Vectors of ``items`` in order, encoding (chunk by chunk, each saved) only the ones not cached."""
        keys = [self.key(item) for item in items]
        pending = dict(zip(keys, items, strict=True))  # identical items are encoded once
        while True:
            self._scan()  # another run may have encoded some of them meanwhile
            # a chunk is checked before it is trusted: a damaged one's items are encoded again
            pending = {k: item for k, item in pending.items() if not self._cached(k)}
            if not pending:
                break
            part = list(pending.items())[: self.chunk]
            vecs = np.ascontiguousarray(encode([item for _, item in part]), dtype=np.float32)  # (len(part), dim)
            if vecs.ndim != 2 or len(vecs) != len(part):
                raise ValueError(f"encode returned shape {vecs.shape} for {len(part)} items; expected (n, dim)")
            if not np.isfinite(vecs).all():
                raise ValueError("encode returned vectors that are not finite (NaN or infinity): none are cached")
            self._save([k for k, _ in part], vecs)
            self.encoded += len(part)
            if progress is not None:
                progress(len(part))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._vector(*self._where[k]) for k in keys]).astype(np.float32)
