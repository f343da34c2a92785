"""Training pairs in UNITE's JSONL schema, validated line by line, and a builder from a user's folder.

One JSON object per line::

    {"query": {"text": "...", "image": "a.jpg"}, "candidate": {"video": "b.mp4"}, "target_modal": "video"}

``text``, ``image`` and ``video`` are optional but one is needed; ``image``/``video`` may be a path or
a one-element list (paths are relative to the JSONL file). ``<|IMAGE|>`` / ``<|VIDEO|>`` in a text mark
where the media goes; UNITE's prompt always puts the media before the text, so they are removed.
``target_modal`` (e.g. ``"video"`` or ``"text,image"``) defaults to the candidate's modalities.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..corpus import IMAGE_EXTENSIONS, SIDECAR_EXTENSION, VIDEO_EXTENSIONS
from ..errors import InputError
from ..modality import Item
from .loss import modality_code

PLACEHOLDERS = ("<|IMAGE|>", "<|VIDEO|>")
_PLACEHOLDER = re.compile(r"\s*(?:<\|IMAGE\|>|<\|VIDEO\|>)\s*")


@dataclass(frozen=True)
class Pair:
    query: Item
    candidate: Item
    target: int  # modality code the query looks for
    candidate_code: int
    line: int  # 1-based line in its file (0 for built pairs)


def _code(item: Item) -> int:
    return modality_code([m.value for m in item.modalities])


def _side(value: Any, base: Path, what: str) -> Item:
    if not isinstance(value, dict) or not value:
        raise InputError(f"'{what}' must be a non-empty object with text, image or video")
    unknown = set(value) - {"text", "image", "video"}
    if unknown:
        raise InputError(f"'{what}' has unknown key(s) {sorted(unknown)}")
    fields: dict[str, Any] = {}
    text = value.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise InputError(f"'{what}.text' must be a string")
        text = _PLACEHOLDER.sub(" ", text).strip()
        if text:
            fields["text"] = text
    for media in ("image", "video"):
        path = value.get(media)
        if path is None:
            continue
        if isinstance(path, list):
            if len(path) != 1:
                raise InputError(f"'{what}.{media}' lists {len(path)} files; one per item is supported")
            path = path[0]
        if not isinstance(path, str) or not path:
            raise InputError(f"'{what}.{media}' must be a file path")
        full = base / path
        if not full.is_file():
            raise InputError(f"'{what}.{media}' file not found: {full}")
        fields[media] = str(full)
    if not fields:
        raise InputError(f"'{what}' is empty: give text, an image or a video")
    return Item(**fields)


def load_pairs(path: str | os.PathLike, *, on_error: str = "raise") -> tuple[list[Pair], list[str]]:
    """Pairs of a JSONL file, and the problems of the lines skipped (``on_error="skip"``).

    With ``"raise"`` the first bad line raises :class:`InputError` naming ``file:line``.
    """
    path = Path(path)
    base = path.parent
    pairs: list[Pair] = []
    problems: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise InputError(f"not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or "query" not in record or "candidate" not in record:
                    raise InputError("each line needs 'query' and 'candidate' objects")
                query = _side(record["query"], base, "query")
                candidate = _side(record["candidate"], base, "candidate")
                target = record.get("target_modal")
                try:
                    code = modality_code(target) if target is not None else _code(candidate)
                except ValueError as exc:
                    raise InputError(f"target_modal: {exc}") from None
                if code != _code(candidate):
                    raise InputError(f"target_modal {target!r} is not the candidate's modalities")
                pairs.append(Pair(query, candidate, code, _code(candidate), number))
            except InputError as exc:
                message = f"{path}:{number}: {exc.reason}"
                if on_error == "raise":
                    raise InputError(message) from None
                problems.append(message)
    return pairs, problems


def pairs_from_folder(folder: str | os.PathLike) -> list[Pair]:
    """Caption -> media pairs from sidecar captions (``x.txt`` beside ``x.jpg`` / ``x.mp4``)."""
    folder = Path(folder)
    pairs: list[Pair] = []
    for caption in sorted(folder.rglob(f"*{SIDECAR_EXTENSION}")):
        if any(part.startswith(".") for part in caption.relative_to(folder).parts):
            continue
        for media in sorted(caption.parent.glob(caption.stem + ".*")):
            ext = media.suffix.lower()
            if ext not in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
                continue
            text = caption.read_text(encoding="utf-8").strip()
            if not text:
                continue
            kind = "image" if ext in IMAGE_EXTENSIONS else "video"
            candidate = Item(**{kind: str(media)})
            pairs.append(Pair(Item(text=text), candidate, modality_code(kind), modality_code(kind), 0))
    return pairs


def pairs_from_index(index: str | os.PathLike) -> list[Pair]:
    """Caption -> media pairs from a built index: every image or video row with a sidecar caption."""
    from ..store import IndexStore

    store = IndexStore(index)
    manifest = store.require_manifest()
    corpus = Path(manifest["corpus"])
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for shard in ("image", "video"):
        if shard not in manifest["shards"]:
            continue
        for row in store.read_rows(shard, ["path", "caption"]).to_pylist():
            if not row["caption"] or (row["path"], row["caption"]) in seen:
                continue  # segments of one video share a caption: one pair for the clip
            seen.add((row["path"], row["caption"]))
            media = corpus / row["path"]
            if media.is_file():
                code = modality_code(shard)
                pairs.append(Pair(Item(text=row["caption"]), Item(**{shard: str(media)}), code, code, 0))
    return pairs
