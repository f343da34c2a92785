"""The query planner: which shards a query searches, with what parameters, and how results merge.

Plans are data: :func:`plan_query` builds a frozen :class:`QueryPlan` from the query's inputs and
the index's shards without touching a model, so routing is tested as a table of cases.

Default routing (``target`` not given): text -> the media shards (``image``, ``video``);
image -> ``image``; video -> ``video``; image + text -> ``image`` (composed image retrieval);
video + text -> ``video`` (composed video retrieval, as in WebVid-CoVR); ``like=<row id>`` ("more
like this") -> the row's own shard. ``target`` names one shard or a list (``"text"``,
``"image+text"``...), or ``"all"``. A composed query never returns its own reference: rows whose
content hash equals the reference file's are excluded, as the CoVR protocol does.

Merging: one shard's results are ranked by cosine similarity. Scores of different shards are not on
one scale (UNITE's training never contrasted an image against a video for the same query), so
results from several shards are merged by reciprocal-rank fusion: each hit scores
``sum(1 / (60 + rank in its shard))``; each hit keeps its raw cosine and says which shard it came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import PlanError, UnknownRowError
from .modality import Item, Modality
from .prompts import render
from .schema import FILTER_COLUMNS, shard_name

__all__ = ["RRF_K", "PlanError", "QueryPlan", "ShardSearch", "default_targets", "merge_results", "plan_query"]

RRF_K = 60
MEDIA = ("image", "video")


@dataclass(frozen=True)
class ShardSearch:
    shard: str
    k: int  # candidates taken from this shard before merging
    rows: int
    index: str  # "flat" or "ivf"
    nprobe: int | None


@dataclass(frozen=True)
class QueryPlan:
    """What a query will do. ``explain()`` prints it."""

    modalities: tuple[str, ...]  # of the query, in prompt order
    prompt: str  # the rendered template (visual pads not expanded)
    text: str | None
    like: str | None  # "more like this": a stored row's vector instead of encoding
    targets: tuple[ShardSearch, ...]
    k: int
    merge: str  # "cosine" (one shard) or "rrf"
    where: str | None
    exclude_ids: tuple[str, ...]
    exclude_reference: bool  # composed query: drop rows with the reference file's content hash
    routed_by: str  # "default" or "target"

    @property
    def shards(self) -> tuple[str, ...]:
        return tuple(s.shard for s in self.targets)

    def explain(self) -> str:
        query = " + ".join(self.modalities) if self.like is None else f"like {self.like!r} (stored vector)"
        lines = [f"query     {query}"]
        if self.like is None:
            lines.append(f"prompt    {self.prompt!r}")
        lines.append(f"route     {', '.join(self.shards) or '(none)'} ({self.routed_by})")
        for s in self.targets:
            how = "exact inner product" if s.index == "flat" else f"IVF, nprobe {s.nprobe}"
            lines.append(f"  search  {s.shard}: top {s.k} of {s.rows} rows, {how}")
        if self.merge == "rrf":
            lines.append(
                f"merge     reciprocal-rank fusion (1 / ({RRF_K} + rank), summed), top {self.k}: cosines of "
                "different shards are not comparable"
            )
        else:
            lines.append(f"merge     by cosine similarity, top {self.k}")
        if self.where:
            lines.append(f"filter    {self.where} (before the top-k cut)")
        excluded = list(self.exclude_ids)
        if self.exclude_reference:
            excluded.append("rows with the reference file's content hash")
        if excluded:
            lines.append(f"exclude   {', '.join(excluded)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


def default_targets(query: str, available: Iterable[str]) -> tuple[str, ...]:
    """Shards a query of modalities ``query`` (a shard-style name) searches when no target is given."""
    available = set(available)
    parts = set(query.split("+"))
    if parts == {"text"}:
        wanted = [s for s in MEDIA if s in available]
        if not wanted:
            raise PlanError(
                f"a text query searches the image and video shards, and this index has neither "
                f"(shards: {', '.join(sorted(available)) or 'none'}); pass target='text' to search texts"
            )
        return tuple(wanted)
    if "video" in parts:
        wanted = "video"
    elif "image" in parts:
        wanted = "image"
    else:
        raise PlanError(f"no default route for a {query} query; pass target=")
    if wanted not in available:
        raise PlanError(
            f"a {query} query searches the {wanted} shard, which this index does not have "
            f"(shards: {', '.join(sorted(available)) or 'none'}); pass target= to search another"
        )
    return (wanted,)


def _targets(target, available: Iterable[str]) -> tuple[str, ...]:
    available = sorted(available)
    if not isinstance(target, (str, Iterable)) or isinstance(target, (bytes, Mapping)):
        raise PlanError(f"target is a shard name such as 'image', a list of them, or 'all'; not {target!r}")
    names = [target] if isinstance(target, str) else list(target)
    if not names:
        raise PlanError("target is an empty list")
    if names == ["all"]:
        return tuple(available)
    out = []
    for name in names:
        if not isinstance(name, str):
            raise PlanError(f"a target is a shard name such as 'image' or 'image+text', not {name!r}")
        try:
            canonical = shard_name(name.split("+"))
        except ValueError:
            raise PlanError(
                f"unknown target {name!r}: a target is text, image, video, a '+' of them, or 'all'"
            ) from None
        if canonical not in available:
            raise PlanError(f"this index has no {canonical} shard (shards: {', '.join(available) or 'none'})")
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def plan_query(
    shards: Mapping[str, Mapping[str, Any]],
    *,
    text: str | None = None,
    image: Any = None,
    video: Any = None,
    like: str | None = None,
    like_shard: str | None = None,
    target: str | Iterable[str] | None = None,
    k: int = 10,
    instruction: str | None = None,
    where: str | None = None,
    exclude: Iterable[str] | None = None,
) -> QueryPlan:
    """Plan a query against an index's published shards (``manifest["shards"]``), without a model.

    Every argument is checked here, so a bad one is a :class:`PlanError` naming it, never an error
    from deep inside a search.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise PlanError(f"k must be a positive integer, not {k!r}")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise PlanError("text must be a non-empty string")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise PlanError("instruction must be a non-empty string")
    if like is not None and (not isinstance(like, str) or not like):
        raise PlanError(f"like= takes a row id (a string), not {like!r}")
    for name, value in (("text", text), ("instruction", instruction)):
        if value is not None and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # "\ud800" in a JSON body: no tokenizer takes it
                where = exc.start + 1
                raise PlanError(f"{name} is not valid Unicode (a lone surrogate at character {where})") from None
    _check_media("image", image)
    _check_media("video", video)
    exclude = _exclude_ids(exclude)
    if where is not None:
        from .filters import validate_where

        where = validate_where(where, FILTER_COLUMNS)
    item = Item(text=text, image=image, video=video, instruction=instruction)
    full_text, modalities = item.full_text, item.modalities
    if like is not None:
        if modalities:
            raise PlanError(
                "like= reuses a stored vector: give it alone, without text, an instruction, an image or a video"
            )
        if like_shard is None:
            raise UnknownRowError(f"no row with id {like!r} in this index")
        query = like_shard
    elif not modalities:
        raise PlanError("a query needs text, an image, a video (or a combination), or like=<row id>")
    else:
        query = shard_name(modalities)
    routed_by = "target" if target is not None else "default"
    if target is not None:
        names = _targets(target, shards)
    else:  # more like this: the row's own shard; otherwise where the query's modalities look
        names = (query,) if like is not None else default_targets(query, shards)
    per_shard_k = k  # every shard contributes up to k, so the merged top k is exact for one shard
    searches = tuple(
        ShardSearch(
            name,
            per_shard_k,
            int(shards[name].get("rows", 0)),
            shards[name].get("index", {}).get("type", "flat"),
            shards[name].get("index", {}).get("nprobe"),
        )
        for name in names
    )
    composed = Modality.TEXT in modalities and bool(modalities & {Modality.IMAGE, Modality.VIDEO})
    order = [m.value for m in (Modality.TEXT, Modality.IMAGE, Modality.VIDEO) if m in modalities]
    exclude_ids = exclude + ((like,) if like is not None else ())
    return QueryPlan(
        modalities=tuple(order) if like is None else tuple(query.split("+")),
        prompt=render(modalities, full_text) if like is None else "",
        text=full_text,
        like=like,
        targets=searches,
        k=k,
        merge="rrf" if len(searches) > 1 else "cosine",
        where=where,
        exclude_ids=exclude_ids,
        exclude_reference=composed,
        routed_by=routed_by,
    )


def _check_media(name: str, value: Any) -> None:
    if value is None or isinstance(value, (str, os.PathLike)):
        if isinstance(value, str) and not value:
            raise PlanError(f"{name} is an empty path")
        return
    kind = type(value).__module__.split(".")[0]
    if kind in ("PIL", "numpy") or (name == "video" and isinstance(value, Sequence)):
        return
    what = "a file path, a PIL image or an (H, W, 3) uint8 array" if name == "image" else "a file path or frames"
    raise PlanError(f"{name} must be {what}, not {type(value).__name__}")


def _exclude_ids(exclude: Any) -> tuple[str, ...]:
    """``exclude=`` as a tuple of row ids: one id, or an iterable of ids."""
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    if not isinstance(exclude, Iterable) or isinstance(exclude, (bytes, Mapping)):
        raise PlanError(f"exclude= takes row ids (strings), not {type(exclude).__name__}")
    ids = tuple(exclude)
    bad = [x for x in ids if not isinstance(x, str) or not x]
    if bad:
        raise PlanError(f"exclude= takes row ids (non-empty strings), not {bad[0]!r}")
    return ids


Ranked = tuple[str, Mapping[str, Any], float, "float | None"]  # (shard, row, cosine, fused score)


def merge_results(
    merge: str, k: int, per_shard: Sequence[tuple[str, Sequence[tuple[Mapping[str, Any], float]]]]
) -> list[Ranked]:
    """The final top ``k`` from each shard's (row, cosine) list, best first, by the plan's merge rule.

    ``cosine``: one shard, by score. ``rrf``: reciprocal-rank fusion, ``sum(1 / (RRF_K + rank))`` over
    the shards a row appears in; ties go to the higher cosine. Rows are told apart by shard and ``id``.
    """
    if merge == "cosine":
        ranked: list[Ranked] = [(shard, row, score, None) for shard, hits in per_shard for row, score in hits]
        ranked.sort(key=lambda h: -h[2])
        return ranked[:k]
    if merge != "rrf":
        raise ValueError(f"unknown merge rule {merge!r}")
    fused: dict[tuple[str, str], list] = {}
    for shard, hits in per_shard:
        for rank, (row, score) in enumerate(hits, start=1):
            entry = fused.setdefault((shard, row["id"]), [shard, row, score, 0.0])
            entry[3] += 1.0 / (RRF_K + rank)
    ordered = sorted(fused.values(), key=lambda h: (-h[3], -h[2]))
    return [(shard, row, score, total) for shard, row, score, total in ordered[:k]]
