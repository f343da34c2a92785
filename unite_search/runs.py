"""Run logs: each ingest's report as ``runs/<UTC time>.json``: status, counts, timings, every failure (with
the decoder's own message, ``detail``), FFmpeg's other messages and, when a bug or MemoryError stopped the
run, its traceback. Nothing of this is printed on the terminal but the summary."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from .diskio import remove_stale_temporaries, write_json

RUNS = "runs"
# statuses renamed since: "skipped" meant "finished, some inputs failed" (and read as if the run was skipped)
RENAMED_STATUS = {"skipped": "finished_with_failures"}


def write_run(folder: Path, report: dict[str, Any]) -> Path:
    runs = folder / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(runs)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = runs / f"{stamp}.json"
    write_json(path, report)
    return path


def last_run(folder: Path, statuses: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """The latest run log (of a run that ended with one of ``statuses``, when given)."""
    runs = sorted((folder / RUNS).glob("*.json")) if (folder / RUNS).exists() else []
    for path in reversed(runs):
        try:
            with open(path) as fh:
                report = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue  # a report cut short by a full disk: show the one before
        if not isinstance(report, dict):
            continue
        if report.get("status") in RENAMED_STATUS:
            report["status"] = RENAMED_STATUS[report["status"]]  # a run log written before the rename
        if statuses is None or report.get("status") in statuses:
            return report
    return None
