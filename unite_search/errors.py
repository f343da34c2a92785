"""Exceptions raised by unite-search. Each says what was wrong and how to fix it."""

from __future__ import annotations


class UniteError(Exception):
    """Base class for every error unite-search raises on purpose."""


class InputError(UniteError, ValueError):
    """An item could not be read or turned into model inputs (missing file, bad image, empty text...)."""

    def __init__(self, message: str, *, source: object = None, index: int | None = None):
        where = []
        if index is not None:
            where.append(f"item {index}")
        if source is not None:
            where.append(repr(source) if not isinstance(source, str) else source)
        prefix = f"{' '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.source = source
        self.index = index
        self.reason = message

    def at(self, index: int) -> InputError:
        """The same error, located at position ``index`` of the caller's item list."""
        return InputError(self.reason, source=self.source, index=index)


class PlanError(UniteError, ValueError):
    """The query cannot be planned against this index (no input, unknown or absent target, bad filter...)."""


class ModelLoadError(UniteError, RuntimeError):
    """The encoder weights could not be found or do not match the expected architecture."""


class MissingDependencyError(UniteError, ImportError):
    """An optional dependency is not installed."""


class IndexNotFoundError(UniteError):
    """The folder holds no unite-search index (or no such shard)."""


class IndexMismatchError(UniteError):
    """The index was built with another model, other settings or another corpus."""


class IndexLockedError(UniteError):
    """Another ingest holds the index's writer lock."""


class IndexDamagedError(UniteError):
    """A file the published manifest names is missing, truncated or altered."""


class IndexWriteError(UniteError):
    """The index could not be written (disk full, read-only, permissions); the published state is unchanged."""


class StaleReadError(UniteError):
    """A reader's pinned state was pruned after later publishes: call ``refresh()``."""
