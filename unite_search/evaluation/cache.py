"""An on-disk cache of embeddings keyed by model, settings and item content.

A rerun costs nothing and a crash mid-benchmark loses at most the chunk being encoded: vectors are
written chunk by chunk (``chunk-N.npy`` then ``chunk-N.json`` with its keys; a chunk without its key
file is ignored). Items are keyed by their text and the sha256 of their media files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus import file_sha256

DEFAULT_DIR = Path("~/.cache/unite-search/embeddings")
CHUNK = 256


def _file_sha(path: str, memo: dict[tuple[str, int, int], str]) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in memo:
        memo[key] = file_sha256(path)
    return memo[key]


class EmbeddingCache:
    """Vectors of one encoder (model revision + settings) under ``root``."""

    def __init__(self, root: str | os.PathLike, settings: dict[str, Any], chunk: int = CHUNK):
        self.chunk = chunk
        namespace = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root).expanduser() / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
        self._where: dict[str, tuple[int, int]] = {}
        self._chunks: dict[int, np.ndarray] = {}
        self._memo: dict[tuple[str, int, int], str] = {}
        self.encoded = 0  # items encoded by this process (0 on a fully cached rerun)
        for keys_file in sorted(self.dir.glob("chunk-*.json")):
            n = int(keys_file.stem.split("-")[1])
            if (self.dir / f"chunk-{n}.npy").exists():
                for row, key in enumerate(json.loads(keys_file.read_text())):
                    self._where[key] = (n, row)

    def key(self, item: dict[str, Any]) -> str:
        content = {k: item.get(k) for k in ("text", "instruction")}
        for media in ("image", "video"):
            if item.get(media) is not None:
                content[media] = _file_sha(str(item[media]), self._memo)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def _vector(self, n: int, row: int) -> np.ndarray:
        if n not in self._chunks:
            self._chunks[n] = np.load(self.dir / f"chunk-{n}.npy", mmap_mode="r")
        return self._chunks[n][row]

    def embed(
        self, items: Sequence[dict[str, Any]], encode: Callable[[list[dict[str, Any]]], np.ndarray], progress=None
    ) -> np.ndarray:
        """Vectors of ``items`` in order, encoding (chunk by chunk, each saved) only the ones not cached."""
        keys = [self.key(item) for item in items]
        todo: dict[str, dict[str, Any]] = {}
        for key, item in zip(keys, items, strict=True):
            if key not in self._where:
                todo.setdefault(key, item)  # identical items are encoded once
        pending = list(todo.items())
        for start in range(0, len(pending), self.chunk):
            part = pending[start : start + self.chunk]
            vecs = np.ascontiguousarray(encode([item for _, item in part]), dtype=np.float32)
            n = 1 + max((c for c, _ in self._where.values()), default=-1)
            tmp = self.dir / f".chunk-{n}.npy.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, vecs)
            os.replace(tmp, self.dir / f"chunk-{n}.npy")
            (self.dir / f".chunk-{n}.json.tmp").write_text(json.dumps([k for k, _ in part]))
            os.replace(self.dir / f".chunk-{n}.json.tmp", self.dir / f"chunk-{n}.json")
            for row, (key, _) in enumerate(part):
                self._where[key] = (n, row)
            self.encoded += len(part)
            if progress is not None:
                progress(len(part))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._vector(*self._where[k]) for k in keys]).astype(np.float32)
