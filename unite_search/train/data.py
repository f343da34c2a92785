"""Training pairs in UNITE's JSONL schema, validated line by line, and a builder from a user's folder.

One JSON object per line::

    {"query": {"text": "...", "image": "a.jpg"}, "candidate": {"video": "b.mp4"}, "target_modal": "video"}

``text``, ``image`` and ``video`` are optional but one is needed; ``image``/``video`` may be a path or
a one-element list (paths are relative to the JSONL file, and must stay inside its folder unless
``allow_outside=True``). ``<|IMAGE|>`` / ``<|VIDEO|>`` in a text mark where the media goes: UNITE's prompt
(and so every vector the engine makes) puts it before the text, so a placeholder may only open a text, for media
its side has, and is removed with the whitespace after it; one later in the text is a bad line, not moved.
``target_modal`` (e.g. ``"video"`` or ``"text,image"``) defaults to the candidate's modalities.

:func:`load_pairs` checks each text as the encoder does (no reserved token, no lone surrogate) and opens every
image and video a line names (:mod:`.probe`), so an input the encoder would refuse mid-run is reported as
``file:line`` before training. :func:`write_pairs` writes pairs in this schema
(what ``unite-search pairs`` does with :func:`pairs_from_folder` / :func:`pairs_from_index`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..corpus import SIDECAR_EXTENSION, Confined, claimed_kind, within
from ..diskio import io_reason
from ..encoder import Encoder
from ..errors import ConfigError, InputError
from ..modality import Item
from .loss import CODES, modality_code

PLACEHOLDERS = {"<|IMAGE|>": "image", "<|VIDEO|>": "video"}
_LEADING = re.compile(r"\s*(<\|IMAGE\|>|<\|VIDEO\|>)")


@dataclass(frozen=True)
class Pair:
    query: Item
    candidate: Item
    target: int  # modality code the query looks for
    candidate_code: int
    line: int  # 1-based line in its file (0 for built pairs)


def modality_names(code: int) -> str:
    """The ``target_modal`` text of a modality code: 3 -> ``"text,image"``."""
    names = [name for name, bit in CODES.items() if code & bit]
    if not names or sum(CODES[n] for n in names) != code:
        raise ValueError(f"not a modality code: {code}")
    return ",".join(names)


def _code(item: Item) -> int:
    return modality_code([m.value for m in item.modalities])


def _warn_skipped(skipped: list[str], folder: Confined) -> None:
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s) leading outside {folder.real} (e.g. {skipped[0]}); "
            "pass allow_outside=True (--allow-outside) to read them",
            UserWarning,
            stacklevel=3,
        )


def _without_placeholders(text: str, what: str, media: set[str]) -> str:
    """``text`` without the placeholders that open it; one that does not, or that names media the side lacks
    (or names twice), is an :class:`InputError`: moved or dropped, it would train on another input than written."""
    seen: list[str] = []
    while found := _LEADING.match(text):
        seen.append(found.group(1))
        text = text[found.end() :]
    for tag, kind in PLACEHOLDERS.items():
        if tag in text:
            raise InputError(f"'{what}.text' has {tag} after the start: UNITE's prompt puts the {kind} before "
                             "the text, as every query and index vector has it; write it at the start or leave it "
                             "out")  # fmt: skip
        if kind not in media and tag in seen:
            raise InputError(f"'{what}.text' has {tag} but '{what}' has no {kind}")
        if seen.count(tag) > 1:
            raise InputError(f"'{what}.text' has {tag} {seen.count(tag)} times; an item holds one {kind}")
    return text.strip()


def _side(value: Any, base: Path, what: str, folder: Confined | None) -> Item:
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
        text = _without_placeholders(text, what, {m for m in ("image", "video") if value.get(m) is not None})
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
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InputError(f"'{what}.{media}' must be a file path")
        full = base / path
        try:
            if folder is not None and not folder.holds(path):  # decided before the file is looked at
                raise InputError(
                    f"'{what}.{media}' is outside the data folder ({folder.real}); "
                    "pass allow_outside=True (--allow-outside) to read it"
                )
            found = full.is_file()
        except OSError as exc:  # a name too long for the file system, a folder that cannot be searched
            raise InputError(f"'{what}.{media}' cannot be looked up: {io_reason(exc)}") from None
        if not found:
            raise InputError(f"'{what}.{media}' file not found: {full}")
        fields[media] = str(full)
    if not fields:
        raise InputError(f"'{what}' is empty: give text, an image or a video")
    item = Item(**fields)
    try:
        Encoder._check_text(item, None)  # what the encoder refuses would stop training at that pair's step
    except InputError as exc:
        raise InputError(f"'{what}.text': {exc.reason}") from None
    return item


def _media(pair: Pair) -> list[tuple[str, str, str]]:
    """(label, kind, path) of each media file a pair names."""
    return [(f"{what}.{kind}", kind, getattr(item, kind))
            for what, item in (("query", pair.query), ("candidate", pair.candidate))
            for kind in ("image", "video") if isinstance(getattr(item, kind), str)]  # fmt: skip


def load_pairs(
    path: str | os.PathLike,
    *,
    on_error: str = "raise",
    allow_outside: bool = False,
    probe: bool = True,
    workers: int | None = None,
) -> tuple[list[Pair], list[str]]:
    """Pairs of a JSONL file, and the problems of the lines skipped (``on_error="skip"``), as ``file:line: reason``.

    Every line is read and, with ``probe=True``, every image and video it names is opened (see
    :mod:`unite_search.train.probe`: on ``workers`` threads, files that passed before are not opened again).
    With ``"raise"`` any bad line raises one :class:`InputError` listing every bad line, in line order.
    Media files must be inside the JSONL file's folder (symlinks followed) unless ``allow_outside=True``.
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    base = path.parent
    folder = None if allow_outside else Confined.of(base)
    read: list[Pair] = []
    problems: list[tuple[int, str]] = []
    with open(path, "rb") as fh:  # decoded line by line: one line that is not UTF-8 is that line's problem
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                try:
                    record = json.loads(line.decode("utf-8-sig"))  # a BOM is not content
                except UnicodeDecodeError:
                    raise InputError("not UTF-8 text") from None
                except json.JSONDecodeError as exc:
                    raise InputError(f"not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise InputError("JSON nested too deeply to read") from None
                if not isinstance(record, dict) or "query" not in record or "candidate" not in record:
                    raise InputError("each line needs 'query' and 'candidate' objects")
                query = _side(record["query"], base, "query", folder)
                candidate = _side(record["candidate"], base, "candidate", folder)
                target = record.get("target_modal")
                try:
                    code = modality_code(target) if target is not None else _code(candidate)
                except ValueError as exc:
                    raise InputError(f"target_modal: {exc}") from None
                if code != _code(candidate):
                    raise InputError(f"target_modal {target!r} is not the candidate's modalities")
                read.append(Pair(query, candidate, code, _code(candidate), number))
            except InputError as exc:
                problems.append((number, f"{path}:{number}: {exc.reason}"))
    pairs = read
    if probe:
        from .probe import probe_files

        found = probe_files([(kind, file) for pair in read for _, kind, file in _media(pair)], workers=workers)
        pairs = []
        for pair in read:
            bad = [f"'{label}' {file}: {found[(kind, file)]}" for label, kind, file in _media(pair)
                   if found[(kind, file)] is not None]  # fmt: skip
            if bad:
                problems.append((pair.line, f"{path}:{pair.line}: {'; '.join(bad)}"))
            else:
                pairs.append(pair)
    messages = [message for _, message in sorted(problems)]
    if on_error == "raise" and messages:
        if len(messages) == 1:
            raise InputError(messages[0])
        raise InputError(f"{len(messages)} bad lines in {path} (fix them, or skip them with on_error='skip'):\n"
                         + "\n".join(messages))  # fmt: skip
    return pairs, messages


def _relative(file: str, folder: Confined) -> str:
    """``file`` relative to the folder (``/`` separated) when it lies inside it, else absolute."""
    full = os.path.abspath(file)
    for root in (folder.given, folder.real):
        if within(root, full) and folder.holds(full):
            return Path(os.path.relpath(full, root)).as_posix()
    return full


def _record_side(item: Item, folder: Confined, outside: list[str]) -> dict[str, str]:
    if item.instruction is not None:
        raise InputError(f"{item.describe()}: the pair schema has no instruction field; put it in the text")
    side: dict[str, str] = {}
    if item.full_text is not None:
        side["text"] = item.full_text
    for kind in ("image", "video"):
        value = getattr(item, kind)
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise InputError(f"{item.describe()}: only files can be written to a pair file, not {type(value).__name__}")
        written = _relative(os.fspath(value), folder)
        if os.path.isabs(written):
            outside.append(written)
        side[kind] = written
    return side


def write_pairs(pairs: list[Pair], path: str | os.PathLike) -> list[str]:
    """Write ``pairs`` as a JSONL file that :func:`load_pairs` (``finetune --data``) reads back as the same pairs.

    Media paths are written relative to the file's folder, or absolute where they lie outside it (those are
    returned: reading them back needs ``allow_outside=True`` / ``--allow-outside``). The file is replaced
    atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Confined.of(path.parent)
    outside: list[str] = []
    lines = []
    for pair in pairs:
        record = {"query": _record_side(pair.query, folder, outside),
                  "candidate": _record_side(pair.candidate, folder, outside),
                  "target_modal": modality_names(pair.target)}  # fmt: skip
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return outside


def pairs_from_folder(folder: str | os.PathLike, *, allow_outside: bool = False) -> list[Pair]:
    """Caption -> media pairs from sidecar captions (``x.txt`` beside ``x.jpg`` / ``x.mp4``).

    A caption labels the images and videos of its folder whose name without the extension is exactly its
    own (the index's rule for sidecar captions): ``cat.txt`` captions ``cat.jpg`` and ``cat.mp4``, not
    ``cat.small.jpg``. Captions and media that symlinks lead outside ``folder`` are skipped, unread, with a
    warning, unless ``allow_outside=True``.
    """
    folder = Path(folder)
    confined = None if allow_outside else Confined.of(folder)
    media_by_stem: dict[Path, list[Path]] = {}  # folder/stem -> its images and videos
    captions = []
    for file in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in file.relative_to(folder).parts) or not file.is_file():
            continue
        stem, ext = os.path.splitext(file)
        if ext.lower() == SIDECAR_EXTENSION:
            captions.append(file)
        elif claimed_kind(file) in ("image", "video"):
            media_by_stem.setdefault(Path(stem), []).append(file)
    pairs: list[Pair] = []
    skipped: list[str] = []
    for caption in captions:
        media_files = []
        for media in media_by_stem.get(Path(os.path.splitext(caption)[0]), []):
            if confined is not None and not confined.holds(os.path.abspath(media)):
                skipped.append(str(media))
                continue
            media_files.append(media)
        if not media_files:
            continue
        if confined is not None and not confined.holds(os.path.abspath(caption)):
            skipped.append(str(caption))
            continue
        text = caption.read_text(encoding="utf-8").strip()
        if not text:
            continue
        for media in media_files:
            kind = claimed_kind(media)
            candidate = Item(**{kind: str(media)})
            pairs.append(Pair(Item(text=text), candidate, modality_code(kind), modality_code(kind), 0))
    if confined is not None:
        _warn_skipped(skipped, confined)
    return pairs


def pairs_from_index(index: str | os.PathLike, *, allow_outside: bool = False) -> list[Pair]:
    """Caption -> media pairs from a built index: one per captioned image or video, as :func:`pairs_from_folder`
    makes them from the folder the index was built from.

    Identical files at several paths share one row. An index built with ``pairs="composed"`` keeps every caption
    (a composed row per content and caption, naming the copies that carry it): its pairs are the folder's. One
    built without keeps one caption for such copies, so they give one pair, and a warning says how many rows
    have copies (``pairs_from_folder`` reads each caption). Row paths are joined to the index's corpus folder;
    one leading outside it (``..``, an absolute path, a symlink) is skipped with a warning unless
    ``allow_outside=True``.
    """
    from ..schema import shard_name
    from ..store import IndexStore

    store = IndexStore(index)
    manifest = store.require_manifest()
    corpus = Path(manifest["corpus"])
    composed = manifest.get("ingest", {}).get("pairs") == "composed"
    confined = None if allow_outside else Confined.of(corpus)
    pairs: list[Pair] = []
    skipped: list[str] = []
    seen: set[tuple[str, str]] = set()
    copied: set[str] = set()  # without composed rows: captioned rows whose content is at several paths
    for kind in ("image", "video"):
        shard = shard_name([kind, "text"]) if composed else kind
        if shard not in manifest["shards"]:
            continue
        for row in store.read_rows(shard, ["path", "paths", "caption", "source"]).to_pylist():
            if not row["caption"] or (composed and row["source"] != "pair"):
                continue  # a composed shard's manifest items hold texts of their own, not captions
            if not composed and len(row["paths"] or ()) > 1:
                copied.add(row["path"])
            for path in (row["paths"] or [row["path"]]) if composed else [row["path"]]:
                if (path, row["caption"]) in seen:
                    continue  # segments of one video share a caption: one pair for the clip
                seen.add((path, row["caption"]))
                if confined is not None and not confined.holds(path):
                    skipped.append(path)
                    continue
                media = corpus / path
                if media.is_file():
                    code = modality_code(kind)
                    pairs.append(Pair(Item(text=row["caption"]), Item(**{kind: str(media)}), code, code, 0))
    if confined is not None:
        _warn_skipped(skipped, confined)
    if copied:
        warnings.warn(
            f"{len(copied)} captioned file(s) of the index have identical copies at other paths (e.g. {min(copied)}): "
            "an index built without --pairs composed keeps one caption for a file and its copies, so they give one "
            "pair here; `pairs` on the corpus folder gives one per captioned copy",
            UserWarning,
            stacklevel=2,
        )
    return pairs
