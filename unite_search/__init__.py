"""unite-search: vector search over text, images and videos with the UNITE multimodal encoder.

Importing the package is cheap: torch and transformers load when an encoder is first created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors as _errors
from .errors import (
    ConfigError,
    DatasetError,
    DeviceError,
    EncodeError,
    IndexDamagedError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexWriteError,
    IngestCrashError,
    IngestError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    PlanError,
    StaleReadError,
    TrainingError,
    UniteError,
    UnknownRowError,
)
from .modality import Item, Modality
from .settings import EncoderSettings
from .speed import Speed

__version__ = "0.1.0"

# every exception class errors.py defines, those named above and any added since
_ERROR_NAMES = sorted(
    name
    for name, value in vars(_errors).items()
    if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == _errors.__name__
)
globals().update({name: getattr(_errors, name) for name in _ERROR_NAMES})

if TYPE_CHECKING:
    from .encoder import Encoder
    from .index import Hit, Index
    from .ingestion import IngestReport, ingest
    from .planner import QueryPlan

__all__ = [
    "ConfigError",
    "DatasetError",
    "DeviceError",
    "EncodeError",
    "Encoder",
    "EncoderSettings",
    "Hit",
    "Index",
    "IndexDamagedError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexWriteError",
    "IngestCrashError",
    "IngestError",
    "IngestReport",
    "InputError",
    "Item",
    "MissingDependencyError",
    "Modality",
    "ModelLoadError",
    "PlanError",
    "QueryPlan",
    "Speed",
    "StaleReadError",
    "TrainingError",
    "UniteError",
    "UnknownRowError",
    "__version__",
    "ingest",
]
__all__ += [name for name in _ERROR_NAMES if name not in __all__]


def __getattr__(name: str):
    if name == "Encoder":
        from .encoder import Encoder

        return Encoder
    if name in ("ingest", "IngestReport"):
        from . import ingestion as module

        return getattr(module, name)
    if name in ("Index", "Hit"):
        from . import index as module

        return getattr(module, name)
    if name == "QueryPlan":
        from .planner import QueryPlan

        return QueryPlan
    raise AttributeError(f"module 'unite_search' has no attribute {name!r}")
