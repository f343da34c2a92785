"""File writes that either land whole or leave nothing, and I/O failures told in one line.

LanceDB and FAISS report a full disk or a read-only folder as ``RuntimeError`` with the OS error
inside the text; :func:`io_reason` finds it there as in an ``OSError``, so that every layer can say
"No space left on device" instead of a 20-frame traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import IndexWriteError, UniteError

TMP_MARK = ".tmp-"
CHUNK = 8 << 20  # temporary files are "<name>.tmp-<pid>" or ".<name>.tmp-<pid>"


def cache_home() -> Path:
    """Where unite-search keeps what it can make again (file hashes, media probes, benchmark vectors):
    ``$XDG_CACHE_HOME/unite-search``, by default ``~/.cache/unite-search``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "unite-search"


_OS_ERROR = re.compile(r"os error (\d+)")
_STRERRORS = {os.strerror(code): code for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO,
                                                    errno.EFBIG, errno.EPERM, errno.ENOENT)}  # fmt: skip


def io_reason(exc: BaseException) -> str | None:
    """The operating system's reason when ``exc`` is an I/O failure (of ours, LanceDB's or FAISS's), else None."""
    if isinstance(exc, OSError) and not isinstance(exc, (BlockingIOError, InterruptedError)):
        return exc.strerror or str(exc)
    if isinstance(exc, RuntimeError):
        text = str(exc)
        found = _OS_ERROR.search(text)
        if found:
            return os.strerror(int(found.group(1)))
        for reason in _STRERRORS:
            if reason in text:
                return reason
    return None


_RUST_SOURCE = re.compile(r",?\s*/\S+\.rs:\d+:\d+")


def brief(exc: BaseException) -> str:
    """An exception's message on one line, without LanceDB's Rust source locations."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _RUST_SOURCE.sub("", text).removeprefix("lance error: ")


def sync_folder(path: str | os.PathLike) -> None:
    """Make a rename into ``path`` (a folder) durable: until its folder is synced, a power cut may undo a
    rename whose file's bytes were synced, or keep a later one (the manifest) without an earlier (its FAISS file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot sync a folder: the renames are as durable as it makes them
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool = False, fsync: bool = True) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename: readers see the old file or
    the whole new one. On failure nothing is left behind. Temporary names are unique per call."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json(path: Path, payload: Any, fsync: bool = True) -> None:
    """Write JSON atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda fh: fh.write(json.dumps(payload, indent=2) + "\n"), fsync=fsync)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed writer left in ``folder`` (call only while holding the writer lock)."""
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if TMP_MARK in entry.name and entry.is_file():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
    return removed


def write_error(exc: BaseException, index_dir: Path) -> IndexWriteError | None:
    """A disk-full, read-only or permission failure as one line naming the cause and the path."""
    if isinstance(exc, UniteError):
        return None
    reason = io_reason(exc)
    if reason is None:
        return None
    where = getattr(exc, "filename", None) or index_dir
    error = IndexWriteError(
        f"cannot write the index at {where}: {reason}. The published state is unchanged; free space or fix "
        "permissions, then run ingest again (it resumes where this run stopped)."
    )
    error.__cause__ = exc
    return error
