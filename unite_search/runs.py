"""Run logs: each ingest's report (counts, timings, every failure) as ``runs/<UTC time>.json``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from .diskio import remove_stale_temporaries, write_json

RUNS = "runs"


def write_run(folder: Path, report: dict[str, Any]) -> Path:
    runs = folder / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(runs)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = runs / f"{stamp}.json"
    write_json(path, report)
    return path


def last_run(folder: Path) -> dict[str, Any] | None:
    runs = sorted((folder / RUNS).glob("*.json")) if (folder / RUNS).exists() else []
    for path in reversed(runs):
        try:
            with open(path) as fh:
                return json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue  # a report cut short by a full disk: show the one before
    return None
