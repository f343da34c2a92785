"""Items a ``*.jsonl`` manifest of the corpus declares, one JSON object a line, each checked on its own: a bad
line is a :class:`~unite_search.corpus.Problem` naming ``file:line``, never the run's failure."""

from __future__ import annotations

import codecs
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .corpus import Entry, Problem, _is_utf8
from .errors import InputError


@dataclass(frozen=True)
class Declared:
    """One item a JSONL manifest declares; media paths are absolute."""

    id: str
    source: str  # "manifest.jsonl:3"
    text: str | None
    image: str | None
    video: str | None
    metadata: dict[str, Any] | None
    raw: dict[str, str] = field(default_factory=dict, compare=False)  # media paths as written in the line


_MANIFEST_KEYS = {"id", "text", "image", "video", "metadata"}


def parse_manifest(entry: Entry) -> tuple[list[Declared], list[Problem]]:
    """Items of a ``*.jsonl`` manifest; each bad line is a :class:`Problem` naming ``file:line``."""
    items: list[Declared] = []
    problems: list[Problem] = []
    base = os.path.dirname(entry.path)
    try:
        with open(entry.path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):  # line by line: a large manifest is never held whole
                where = f"{entry.rel}:{number}"
                if number == 1 and raw.startswith(codecs.BOM_UTF8):  # as some editors save UTF-8
                    raw = raw[len(codecs.BOM_UTF8) :]
                if not raw.strip():
                    continue
                try:  # NaN and Infinity are not JSON: a row holding one could not be answered as JSON
                    record = json.loads(raw.decode("utf-8"), parse_constant=_not_json, parse_float=_finite)
                except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                    problems.append(Problem(where, "manifest", f"not a JSON object: {exc}"))
                    continue
                try:
                    items.append(_declared(record, where, base))
                except InputError as exc:
                    problems.append(Problem(where, "manifest", exc.reason))
    except OSError as exc:
        return items, [*problems, Problem(entry.rel, "manifest", f"cannot read manifest: {exc.strerror or exc}")]
    return items, problems


def _not_json(name: str) -> None:
    raise InputError(f"{name} is not a JSON value (write null, or a string)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{text} is beyond a float's range (write it as a string)")
    return value


def _storable(value: str, key: str) -> None:
    """An id or a path is stored as UTF-8 text and names a file: a lone surrogate or a NUL can be neither."""
    if "\x00" in value:
        raise InputError(f"'{key}' holds a NUL character")
    if not _is_utf8(value):
        raise InputError(f"'{key}' is not valid Unicode (a lone surrogate: half of a character, cut?)")


def _declared(record: Any, where: str, base: str) -> Declared:
    if not isinstance(record, dict):
        raise InputError("each line must be a JSON object")
    unknown = set(record) - _MANIFEST_KEYS
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)}; a line takes {sorted(_MANIFEST_KEYS)}")
    item_id = record.get("id")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or not str(item_id).strip():
        raise InputError("each line needs an 'id' (a non-empty string or integer)")
    _storable(str(item_id), "id")
    text = record.get("text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise InputError("'text' must be a non-empty string")
    media = {}
    for key in ("image", "video"):
        value = record.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise InputError(f"'{key}' must be a file path")
        if value is not None:
            _storable(value, key)
        media[key] = os.path.normpath(os.path.join(base, value)) if value else None
    if text is None and media["image"] is None and media["video"] is None:
        raise InputError("item has none of text, image or video")
    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError("'metadata' must be a JSON object")
    broken = _lone_surrogate(metadata, "metadata")
    if broken is not None:  # JSON escapes carry one, UTF-8 cannot: every answer holding the row would fail
        raise InputError(f"'{broken}' is not valid Unicode (a lone surrogate: half of a character, cut?)")
    raw = {key: record[key] for key in ("image", "video") if record.get(key)}
    return Declared(str(item_id), where, text, media["image"], media["video"], metadata, raw)


def _lone_surrogate(value: Any, where: str) -> str | None:
    """Where in a JSON value a key or string holds a lone surrogate (``metadata.tags[2]``), or None."""
    if isinstance(value, str):
        return None if _is_utf8(value) else where
    if isinstance(value, dict):
        for key, item in value.items():
            found = where if not _is_utf8(key) else _lone_surrogate(item, f"{where}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _lone_surrogate(item, f"{where}[{i}]")) is not None:
                return found
    return None
