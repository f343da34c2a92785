"""File writes that either land whole or leave nothing, and I/O failures told in one line.

LanceDB and FAISS report a full disk or a read-only folder as ``RuntimeError`` with the OS error
inside the text; :func:`io_reason` finds it there as in an ``OSError``, so that every layer can say
"No space left on device" instead of a 20-frame traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"  # temporary files are "<name>.tmp-<pid>" or ".<name>.tmp-<pid>"

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


def write_json(path: Path, payload: Any) -> None:
    """Write atomically (temporary file, fsync, rename); on failure nothing is left behind."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
