"""Media checks for training pairs: every image and video a pair file names is opened before training.

An image must open and decode (Pillow's ``verify``, then a decode, at 1/8 scale for JPEG) with a size
the encoder's two resizes take (an aspect ratio of at most 200:1 before and after the first, with the
default preprocessing settings); a video must have a video stream with at least one frame and a
decodable first frame (:func:`unite_search.video.probe`, with the backend the encoder reads with).
Files are checked on a small thread pool. A file that passed is remembered by (path, size, mtime) in
``$XDG_CACHE_HOME/unite-search/media-probes.sqlite``, so a later run over the same files opens none
of them again; a failure is not remembered (a fixed file or a newly installed decoder is seen at once).
"""

from __future__ import annotations

import os
import re
import sqlite3
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..diskio import cache_home
from ..errors import InputError

PROBE_VERSION = 2  # part of the cache key: a stricter check later re-probes everything once
CACHE_FILE = "media-probes.sqlite"
KINDS = ("image", "video")


@dataclass
class ProbeStats:
    """Work done by :func:`probe_files` in this process: files ``opened``, and ``cached`` ones not opened."""

    opened: int = 0
    cached: int = 0


probe_stats = ProbeStats()


def cache_path() -> Path:
    return cache_home() / CACHE_FILE


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def probe_image(path: str) -> None:
    """Raise :class:`InputError` unless ``path`` decodes as an image the encoder takes."""
    from PIL import Image

    from ..image import smart_resize
    from ..settings import EncoderSettings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify()  # structure and checksums, without decoding
            with Image.open(path) as img:
                width, height = img.size
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # JPEG decodes at 1/8 scale
                img.load()
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large to decode safely ({_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001  Pillow's decoders raise many classes for a bad file
        raise InputError(f"cannot read image: {_one_line(exc)}") from None
    # the encoder's two resizes, on the size alone: each refuses an aspect ratio above 200:1, the second
    # judging the first one's output (57x11400 is 200:1, but 56x11396, 203.5:1, after the first)
    settings = EncoderSettings()
    h, w = smart_resize(height, width, settings.fetch_min_pixels, settings.fetch_max_pixels)
    smart_resize(h, w, settings.min_pixels, settings.max_pixels)


def probe_video(path: str) -> None:
    """Raise :class:`InputError` unless ``path`` has a video stream with at least one decodable frame."""
    from ..video import probe

    try:
        probe(path)  # the backend the encoder reads with (decord when installed)
    except InputError as exc:
        reason = exc.reason
        try:
            probe(path, backend="av")
        except InputError as plain:
            reason = plain.reason  # both fail: PyAV says why in plainer words than decord
        except Exception:  # noqa: BLE001  PyAV missing: keep the first reason
            pass
        raise InputError(_one_line(reason)) from None


def _check(kind: str, path: str) -> str | None:
    try:
        if not os.path.isfile(path):
            return "file not found or not a regular file"
        if os.path.getsize(path) == 0:
            return "file is empty"
        (probe_image if kind == "image" else probe_video)(path)
    except InputError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001  anything else a decoder raises is a bad file too
        return _one_line(f"{type(exc).__name__}: {exc}")
    return None


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class _Cache:
    """Files known good, by (real path, kind): their size and mtime when they passed. Any failure disables it."""

    def __init__(self, enabled: bool):
        self.db = None
        if not enabled:
            return
        try:
            path = cache_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=30)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS good (path TEXT, kind TEXT, size INTEGER, mtime_ns INTEGER, "
                "PRIMARY KEY (path, kind))"
            )
        except (OSError, sqlite3.Error):
            self.db = None

    def known(self, path: str, kind: str, key: tuple[int, int]) -> bool:
        if self.db is None:
            return False
        try:
            row = self.db.execute(
                "SELECT size, mtime_ns FROM good WHERE path = ? AND kind = ?", (path, f"{kind}/{PROBE_VERSION}")
            ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None and tuple(row) == key

    def remember(self, rows: list[tuple[str, str, tuple[int, int]]]) -> None:
        if self.db is None or not rows:
            return
        try:
            with self.db:
                self.db.executemany(
                    "INSERT OR REPLACE INTO good VALUES (?, ?, ?, ?)",
                    [(p, f"{k}/{PROBE_VERSION}", *key) for p, k, key in rows],
                )
        except sqlite3.Error:
            pass  # a cache that cannot be written only costs a re-probe later

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def probe_files(
    files: Iterable[tuple[str, str]], *, workers: int | None = None, cache: bool = True
) -> dict[tuple[str, str], str | None]:
    """Check each ``(kind, path)`` (kind ``"image"`` or ``"video"``); returns the reason it is bad, or None.

    Runs on ``workers`` threads (default: the cores, at most 8). Files that passed before, unchanged since
    (same size and mtime), are not opened again unless ``cache=False``.
    """
    wanted = list(dict.fromkeys(files))
    for kind, _ in wanted:
        if kind not in KINDS:
            raise ValueError(f"kind must be 'image' or 'video', not {kind!r}")
    store = _Cache(cache)
    results: dict[tuple[str, str], str | None] = {}
    todo: list[tuple[str, str, str, tuple[int, int] | None]] = []
    try:
        for kind, path in wanted:
            real = os.path.realpath(path)
            key = _stat_key(real)
            if key is not None and store.known(real, kind, key):
                results[(kind, path)] = None
                probe_stats.cached += 1
            else:
                todo.append((kind, path, real, key))
        if todo:
            threads = workers or min(8, os.cpu_count() or 1)
            with ThreadPoolExecutor(max(1, min(threads, len(todo))), thread_name_prefix="probe") as pool:
                reasons = list(pool.map(lambda t: _check(t[0], t[1]), todo))
            probe_stats.opened += len(todo)
            good = []
            for (kind, path, real, key), reason in zip(todo, reasons, strict=True):
                results[(kind, path)] = reason
                if reason is None and key is not None and _stat_key(real) == key:  # unchanged while checked
                    good.append((real, kind, key))
            store.remember(good)
    finally:
        store.close()
    return results
