"""The evaluation harness: recall on the official benchmark formats (see ``benchmarks/recall.md``)."""

from __future__ import annotations

from .loaders import LOADERS, DatasetError
from .runner import REFERENCES, format_result, run_benchmark

BENCHMARKS = tuple(sorted(LOADERS))

__all__ = ["BENCHMARKS", "REFERENCES", "DatasetError", "format_result", "run_benchmark"]
