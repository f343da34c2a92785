"""unite-search: vector search over text, images and videos with the UNITE multimodal encoder.

Importing the package is cheap: torch and transformers load when an encoder is first created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError, MissingDependencyError, ModelLoadError, UniteError
from .modality import Item, Modality
from .settings import EncoderSettings

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .encoder import Encoder
    from .index import Hit, Index
    from .ingestion import IngestReport, ingest
    from .planner import QueryPlan

__all__ = [
    "Encoder",
    "EncoderSettings",
    "Hit",
    "Index",
    "IngestReport",
    "InputError",
    "Item",
    "MissingDependencyError",
    "Modality",
    "ModelLoadError",
    "QueryPlan",
    "UniteError",
    "__version__",
    "ingest",
]


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
