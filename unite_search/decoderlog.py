"""Decoder messages: FFmpeg's complaints about a file kept for the run log, never printed on the terminal.

PyAV hands FFmpeg's messages to Python; by default it drops them. While :func:`collecting` is open
(an ingest), messages at error level are turned on: a decoding call in ``video.py`` captures those of
its own thread (``av.logging.Capture``), which is thread-safe, and puts them in the failure it raises
(``InputError.detail``) or, when the file was read after all, hands them to :func:`note`. Messages
no call captured (FFmpeg's own decoding threads) reach the ``libav`` logger, where a handler
installed here keeps them too; nothing is written to file descriptor 2, so nothing else printed
there (progress bars, our own messages) is held back or lost.

decord's bundled FFmpeg has no such hook: ``video.py`` sets it quiet, and sends every file through
PyAV first, so that a file decord cannot open never reaches it (decord would print from C).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

LIMIT = 200  # messages kept per run; more are counted, not kept

_lock = threading.Lock()
_sinks: list[list[str]] = []
_saved: dict = {}


class _Keep(logging.Handler):
    """The ``libav`` logger's records into every open collection."""

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name.removeprefix("libav").lstrip(".")
        note(None, [f"[{name}] {record.getMessage()}" if name else record.getMessage()])


_handler = _Keep(level=logging.DEBUG)


def note(path: str | None, messages: Iterable[str]) -> None:
    """Keep ``messages`` (about ``path``, when known) in every open collection."""
    lines = [f"{path}: {m}" if path else m for m in (str(m).strip() for m in messages) if m]
    if not lines:
        return
    with _lock:
        for sink in _sinks:
            room = LIMIT - len(sink)
            sink.extend(lines[: max(0, room)])
            if room < len(lines) and (not sink or not sink[-1].startswith("... ")):
                sink.append("... more decoder messages were not kept")


def active() -> bool:
    """Whether a collection is open (a decoding process then collects its own and hands them back)."""
    with _lock:
        return bool(_sinks)


def _start() -> None:
    try:
        import av.logging as av_logging
    except ImportError:
        return
    logger = logging.getLogger("libav")
    _saved.update(level=av_logging.get_level(), propagate=logger.propagate)
    logger.addHandler(_handler)
    logger.propagate = False  # not to the root logger (or Python's last-resort printer on stderr)
    av_logging.set_level(av_logging.ERROR)


def _stop() -> None:
    if not _saved:
        return
    import av.logging as av_logging

    av_logging.set_level(_saved["level"])
    logger = logging.getLogger("libav")
    logger.removeHandler(_handler)
    logger.propagate = _saved["propagate"]
    _saved.clear()


@contextmanager
def collecting() -> Iterator[list[str]]:
    """Keep FFmpeg's messages (errors) while the block runs; yields the list they are put in.

    Blocks may nest or overlap (two ingests in one process): each gets every message of its time.
    """
    sink: list[str] = []
    with _lock:
        if not _sinks:
            _start()
        _sinks.append(sink)
    try:
        yield sink
    finally:
        with _lock:
            _sinks.remove(sink)
            if not _sinks:
                _stop()


def formatted(logs: Iterable[tuple]) -> list[str]:
    """``av.logging.Capture`` entries, (level, name, message), as text lines."""
    out = []
    for _level, name, message in logs:
        message = message.strip()
        if message:
            out.append(f"[{name}] {message}" if name else message)
    return out
