"""The writer lock: one ingest at a time per index; readers never take it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
from collections.abc import Iterator
from pathlib import Path

from .diskio import io_reason
from .errors import IndexLockedError, IndexWriteError
from .manifest import now

LOCK = "ingest.lock"


@contextlib.contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold the index's exclusive writer lock; the kernel releases it even when the process is killed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / LOCK, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
    except OSError as exc:
        raise IndexWriteError(f"cannot write to the index folder {folder}: {io_reason(exc)}") from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise IndexLockedError(
                f"{folder} is being written by another ingest ({holder}); wait for it to finish. "
                "Searching the index meanwhile is fine."
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()} since {now()}")
            fh.flush()
        except OSError as exc:
            raise IndexWriteError(f"cannot write to the index folder {folder}: {io_reason(exc)}") from None
        yield
    finally:
        fh.close()  # closing drops the flock
