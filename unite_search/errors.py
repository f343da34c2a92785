"""Exceptions raised by unite-search. Each says what was wrong and how to fix it."""

from __future__ import annotations


class UniteError(Exception):
    """Base class for every error unite-search raises on purpose."""


class InputError(UniteError, ValueError):
    """An item could not be read or turned into model inputs (missing file, bad image, empty text...)."""

    def __init__(self, message: str, *, source: object = None, index: int | None = None, detail: str | None = None):
        where = []
        if index is not None:
            where.append(f"item {index}")
        if source is not None:
            where.append(repr(source) if not isinstance(source, str) else source)
        prefix = f"{' '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.source = source
        self.index = index
        self.reason = message  # in words, the same every run (no paths, times or decoder internals)
        self.detail = detail  # the decoder's own message, for the run log (None when the reason says it all)

    def at(self, index: int) -> InputError:
        """The same error, located at position ``index`` of the caller's item list."""
        return InputError(self.reason, source=self.source, index=index, detail=self.detail)

    def located(self, source: object) -> InputError:
        """The same error, naming ``source`` (a path as the caller shows it)."""
        return InputError(self.reason, source=source, index=self.index, detail=self.detail)


class ConfigError(UniteError, ValueError):
    """An argument or setting has a value that cannot work (an option out of range, an unknown name...).

    A user mistake: the command line prints it on one line and exits with status 2.
    """


class DeviceError(ConfigError):
    """The device asked for is unknown or not available on this machine (``cuda`` without a GPU...)."""


class EncodeError(UniteError, RuntimeError):
    """The model gave a vector that is not finite (NaN or infinity): float16 overflowing on an input, or
    damaged weights. No such vector is returned, cached or indexed."""


class TrainingError(UniteError, RuntimeError):
    """Fine-tuning stopped: a step's loss or gradients are not finite (NaN or infinity). Nothing of that
    step was applied; the weights are those after the step before it."""


class IngestError(UniteError):
    """An ingest stopped: under ``on_error="raise"``, the first bad input (nothing was published)."""

    def __init__(self, message: str, problem: object = None):
        super().__init__(message)
        self.problem = problem  # the corpus.Problem that stopped it


class IngestCrashError(UniteError, RuntimeError):
    """An ingest stopped on an internal error (a bug) or on running out of memory.

    The run log (``run_log``) holds the traceback; the rows written before the stop are kept, so the
    same ingest run again continues. The original exception is the ``__cause__``.
    """

    def __init__(self, message: str, run_log: str | None = None):
        super().__init__(message)
        self.run_log = run_log


class DatasetError(UniteError):
    """The folder does not hold the benchmark in its official layout."""


class PlanError(UniteError, ValueError):
    """The query cannot be planned against this index (no input, unknown or absent target, bad filter...)."""


class UnknownRowError(PlanError):
    """``like=`` names a row id this index does not hold (the server answers 404)."""


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
