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
