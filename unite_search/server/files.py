"""Sending files: content types, byte ranges, chunked reads, and thumbnails of images and videos."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from .http_errors import api_error

THUMB_SIZE = 320  # pixels on the long side
THUMB_BYTES_MAX = 4 << 20  # a cached thumbnail larger than this was not made here
CHUNK = 256 << 10  # bytes per read when sending a file


class Digests:
    """The sha256 of files the server sends, known by what changes whenever their bytes do (device, inode,
    size, mtime, ctime): a file is hashed on its first request only (while the server runs and it is among
    the ``limit`` used last); requests for a file being hashed wait for that hash instead of making their own."""

    def __init__(self, limit: int = 1 << 16):
        self.limit = limit
        self._known: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._busy: dict[tuple[int, ...], threading.Lock] = {}
        self._lock = threading.Lock()

    def of(self, fd: int, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            found = self._known.get(key)
            if found is not None:
                self._known.move_to_end(key)
                return found
            gate, mine = self._busy.get(key), False
            if gate is None:
                gate, mine = threading.Lock(), True
                gate.acquire()
                self._busy[key] = gate
        if not mine:
            with gate:  # released once the thread hashing this file is done
                pass
            with self._lock:
                found = self._known.get(key)
            if found is not None:
                return found
        try:
            digest, offset = hashlib.sha256(), 0
            while chunk := os.pread(fd, CHUNK * 4, offset):
                digest.update(chunk)
                offset += len(chunk)
            found = digest.hexdigest()
            with self._lock:
                self._known[key] = found
                while len(self._known) > self.limit:
                    self._known.popitem(last=False)  # the one used longest ago
        finally:
            if mine:
                with self._lock:
                    del self._busy[key]
                gate.release()
        return found


def _sniffed(head: bytes, path: str) -> str | None:
    """The Content-Type a file's first bytes (and, for texts, its extension) announce."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith(b"BM"):
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    ext = Path(path).suffix.lower()
    if ext == ".md":
        return "text/markdown; charset=utf-8"
    if ext == ".txt":
        return "text/plain; charset=utf-8"
    return None


def _content_type(head: bytes, path: str) -> str:
    """The type the file's own bytes show, else a download: never a type guessed from a name, which could
    make a file changed since its ingest (HTML, SVG behind a .jpg link) a page run on this origin."""
    return _sniffed(head, path) or "application/octet-stream"


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range ``[start, end]`` a ``Range`` header asks of a file of ``size`` bytes, or None to send the
    whole file (no header, or one this server ignores as RFC 9110 allows: malformed, several ranges).
    Raises a 416 error (:func:`api_error`) when the range lies past the end of the file."""
    if not header:
        return None
    m = _RANGE.fullmatch(header)
    if not m or not any(m.groups()):
        return None
    # past 18 digits (leading zeros aside) a number is beyond any file's size, and past 4,300 int() refuses it
    first, last = (d if len(d.lstrip("0")) <= 18 else "9" * 18 for d in m.groups())
    unsatisfiable = api_error(
        416,
        f"range {header.strip()!r} lies outside the file ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if not first:  # bytes=-N: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise unsatisfiable
    return start, min(int(last), size - 1) if last else size - 1


def _file_chunks(fd: int, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of an open file from ``start``; closes the file when done or abandoned."""
    try:
        left = length
        while left > 0:
            chunk = os.pread(fd, min(CHUNK, left), start)
            if not chunk:
                return
            start += len(chunk)
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _make_thumbnail(path: str, row: dict[str, Any], video: bool) -> bytes:
    import io

    from PIL import Image, ImageOps

    from ..image import to_rgb

    try:
        if video:
            img = Image.fromarray(_middle_frame(path, row))
        else:
            with Image.open(path) as opened:
                opened.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at a reduced scale
                img = ImageOps.exif_transpose(opened) or opened
                img.load()
        img = to_rgb(img)
        img.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return out.getvalue()
    except InputError as exc:
        raise api_error(422, f"no thumbnail: {exc.reason}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise api_error(422, f"no thumbnail: the file cannot be decoded ({exc})") from None


def _middle_frame(path: str, row: dict[str, Any]):
    """A frame from the middle of a video row's time range."""
    from ..settings import EncoderSettings
    from ..video import read_frames

    settings = EncoderSettings(frames=2)
    start = row.get("start") or 0.0
    end = row.get("end") if row.get("end") is not None else row.get("duration")
    if end is not None and end > start:
        with contextlib.suppress(InputError):  # a range too short to hold a frame after its middle
            frames, _ = read_frames(path, settings, start=(start + end) / 2, end=end)
            return frames[0]
    frames, _ = read_frames(path, settings, start=None, end=None)
    return frames[0]
