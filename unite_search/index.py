"""``Index``: open a built index and query it with any mix of text, image and video.

>>> idx = Index.open("indexes/media")                                        # doctest: +SKIP
>>> idx.query(video="clip.mp4", text="same scene at night", k=5)             # doctest: +SKIP
>>> print(idx.plan(text="a red fox").explain())                              # doctest: +SKIP

``Index`` is a thin facade: a :class:`~unite_search.reader.Snapshot` (one reader per shard, all
pinned to the manifest read at open), the planner, and the encoder, which loads on the first query
that needs encoding (``like=`` and ``plan()`` need none). An ingest running meanwhile is not seen
until :meth:`Index.refresh`, which swaps the whole snapshot at once: a query never mixes two
published states, and a hit whose row cannot be found is an error, never a silent drop.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import file_sha256
from .errors import ConfigError, IndexDamagedError, PlanError
from .modality import Item
from .planner import QueryPlan, merge_results, plan_query
from .reader import Snapshot
from .schema import row_key

_QUERY_KEYS = {"text", "image", "video", "like", "target", "k", "instruction", "where", "exclude"}


@dataclass(frozen=True)
class Hit:
    """One result. ``score`` is the cosine similarity; ``fused`` the merge score when shards were fused."""

    id: str
    score: float
    rank: int
    shard: str
    modality: str
    path: str | None
    paths: tuple[str, ...]
    start: float | None = None  # video segment, seconds
    end: float | None = None
    caption: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    fused: float | None = None
    row: dict[str, Any] | None = None  # every stored column but the vector

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready data: every field but ``row``, ``paths`` as a list (``metadata`` is shared)."""
        out = {name: getattr(self, name) for name in _HIT_FIELDS}
        out["paths"] = list(self.paths)
        return out


_HIT_FIELDS = tuple(f.name for f in fields(Hit) if f.name != "row")


def _mended(value: Any) -> Any:
    """A JSON value with each lone surrogate in its keys and strings replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_mended(k): _mended(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mended(v) for v in value]
    return value


def _null(_name: str) -> None:
    return None


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # 1e999


def _file_sha256(value) -> str | None:
    """Content hash of a query's reference file, to exclude it from its own results."""
    if not isinstance(value, (str, os.PathLike)) or not os.path.isfile(value):
        return None  # in-memory images and frame lists have no file to match
    return file_sha256(value)


class Index:
    """A built index, opened for search. Create with :meth:`Index.open`."""

    def __init__(self, folder: Path, snapshot: Snapshot, *, model, adapter, device, dtype, encoder, gpu_search=False):
        self.path = folder
        self._gpu_search = gpu_search
        self._snapshot = snapshot
        self._model = model
        self._adapter = adapter
        self._device = device
        self._dtype = dtype
        self._encoder = encoder
        self._lock = threading.RLock()  # the encoder loads once, whichever thread queries first
        self._parent: Index | None = None  # a pinned copy's: the index whose encoder it uses
        if encoder is not None:
            self._check(encoder)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        dtype: Any = "auto",
        model: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
        encoder=None,
        gpu_search: bool = False,
    ) -> Index:
        """Open ``path``. The index's own model (and LoRA adapter, if it was built with one) is used unless
        ``model``/``adapter``/``encoder`` says otherwise, and then it must match the one the index was built with.

        ``gpu_search``: search a GPU copy of each shard's FAISS index where FAISS sees a GPU (faiss-gpu) and
        the copy fits in half its free memory; filtered searches stay on the CPU. :meth:`gpu_states` says per shard."""
        folder = Path(os.path.expanduser(path))
        snapshot = Snapshot.open(folder, gpu_search=gpu_search)
        return cls(
            folder, snapshot, model=model, adapter=adapter, device=device, dtype=dtype, encoder=encoder,
            gpu_search=gpu_search,
        )  # fmt: skip

    def refresh(self) -> None:
        """See what an ingest published since the index was opened: the whole snapshot is replaced at once.

        With the encoder loaded, a state its vectors do not fit (the index rebuilt with another model or
        settings) is refused with :class:`~unite_search.errors.IndexMismatchError`, and the index stays as it was.
        """
        from . import manifest as manifests

        encoder = self._parent._encoder if self._parent is not None else self._encoder
        current = manifests.read(self.path) if encoder is not None else None
        if current is not None:
            self._check(encoder, current)  # before a file of that state is opened (a large one: gigabytes)
        snapshot = Snapshot.open(self.path, gpu_search=self._gpu_search)
        if encoder is not None:
            self._check(encoder, snapshot.manifest)  # the state opened, if another was published meanwhile
        self._snapshot = snapshot

    def pinned(self) -> Index:
        """This index at the state it has now, for a caller that plans, encodes and then searches (a server's
        request): the copy's plans and searches read that one state whatever :meth:`refresh` does meanwhile.
        It shares this index's encoder."""
        view = copy.copy(self)
        view._parent = self._parent or self
        return view

    @property
    def manifest(self) -> dict[str, Any]:
        return self._snapshot.manifest

    @property
    def shards(self) -> dict[str, int]:
        """Rows per published shard."""
        return {name: int(entry["rows"]) for name, entry in sorted(self.manifest["shards"].items())}

    def gpu_states(self, load: bool = False) -> dict[str, str]:
        """Per shard, where its searches run with ``gpu_search``: "searched on the GPU (N MB)", or why not
        ("not asked", "not loaded yet", no GPU, too large). ``load``: make the GPU copies now."""
        readers = self._snapshot.readers
        if load:
            for reader in readers.values():
                reader.gpu_index()
        return {name: reader.gpu_state for name, reader in readers.items()}

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, shards={self.shards})"

    # ------------------------------------------------------------------ encoder
    def _check(self, encoder, manifest: dict[str, Any] | None = None) -> None:
        from . import manifest as manifests

        hint = (
            "Query with the model the index was built with (Index.open without model=), "
            f"or rebuild the index with this one (rm -r {self.path}, then ingest)."
        )
        m = manifest if manifest is not None else self.manifest
        manifests.check(self.path, m, encoder.settings, m["ingest"], m["corpus"], hint=hint)

    @property
    def encoder(self):
        """The encoder, loaded on first use: the index's own model, adapter and preprocessing settings."""
        if self._parent is not None:
            return self._parent.encoder
        with self._lock:
            if self._encoder is None:
                from .encoder import Encoder
                from .models import moved_folder
                from .settings import EncoderSettings

                recorded = self.manifest["encoder"]
                try:
                    settings = EncoderSettings.from_record(recorded)
                except ConfigError as exc:
                    why = f"the manifest's encoder settings are invalid ({exc})"
                    raise IndexDamagedError(f"{self.path}: {why}") from None
                gone = moved_folder(self.path, recorded, model=self._model is None, adapter=self._adapter is None)
                if gone is not None:  # the recorded model or adapter folder moved: say so, and how to point at it
                    raise gone
                adapter = self._adapter if self._adapter is not None else recorded.get("adapter")
                encoder = Encoder.load(
                    self._model or recorded["model_id"],
                    adapter=adapter,
                    device=self._device,
                    dtype=self._dtype,
                    settings=settings,
                )
                self._check(encoder)
                self._encoder = encoder
            return self._encoder

    # -------------------------------------------------------------------- query
    def plan(
        self,
        text: str | None = None,
        image: Any = None,
        video: Any = None,
        *,
        like: str | None = None,
        target: str | Iterable[str] | None = None,
        k: int = 10,
        instruction: str | None = None,
        where: str | None = None,
        exclude: Iterable[str] | None = None,
    ) -> QueryPlan:
        """The plan :meth:`query` would run (no model needed). ``print(plan)`` explains it."""
        query = {"text": text, "image": image, "video": video, "like": like, "target": target, "k": k}
        query.update(instruction=instruction, where=where, exclude=exclude)
        return _plan(self._snapshot, query)

    def query(
        self,
        text: str | None = None,
        image: Any = None,
        video: Any = None,
        *,
        like: str | None = None,
        target: str | Iterable[str] | None = None,
        k: int = 10,
        instruction: str | None = None,
        where: str | None = None,
        exclude: Iterable[str] | None = None,
    ) -> list[Hit]:
        """Search with any mix of text, an image and a video; see :mod:`unite_search.planner` for routing.

        ``like`` searches with a stored row's vector ("more like this"; the row itself is left out);
        ``where`` is one SQL condition on the stored columns (``"width >= 1000"``,
        ``"path LIKE 'trips/%'"``) applied before the top-k cut; ``exclude`` drops row ids.
        """
        query = {"text": text, "image": image, "video": video, "like": like, "target": target, "k": k}
        query.update(instruction=instruction, where=where, exclude=exclude)
        return self.query_batch([query])[0]

    def query_batch(
        self, queries: Sequence[Mapping[str, Any]], *, vectors: Sequence[np.ndarray | None] | None = None
    ) -> list[list[Hit]]:
        """Run many queries on one snapshot; those that need encoding share encoder batches.

        ``vectors``, one per query (or None), are query vectors already made by :attr:`encoder` from
        that query's inputs, as a server encoding the queries of many requests in one batch does: a
        query given one is not encoded again. A ``like=`` query takes None (it uses the stored vector).
        """
        snapshot = self._snapshot  # every query of the batch reads this one published state
        if vectors is not None and len(vectors) != len(queries):
            raise PlanError(f"vectors= holds {len(vectors)} vector(s) for {len(queries)} queries")
        plans, found, encode_at, items = [], [], [], []
        for i, q in enumerate(queries):
            if not isinstance(q, Mapping):
                raise PlanError(f"query {i}: a query is a dict of query arguments, not {type(q).__name__}")
            unknown = set(q) - _QUERY_KEYS
            if unknown:
                raise PlanError(f"query {i}: unknown key(s) {sorted(unknown)}; a query takes {sorted(_QUERY_KEYS)}")
            plan = _plan(snapshot, q)
            plans.append(plan)
            given = vectors[i] if vectors is not None else None
            if plan.like is not None:
                if given is not None:
                    raise PlanError(f"query {i}: like= uses the stored vector; give None as its vector")
                found.append(_find(snapshot, plan.like)[1])
            elif given is not None:
                found.append(_given_vector(snapshot, given, i))
            else:
                found.append(None)
                encode_at.append(i)
                items.append(Item(q.get("text"), q.get("image"), q.get("video"), q.get("instruction")))
        if items:
            for i, vec in zip(encode_at, self.encoder.encode(items), strict=True):
                found[i] = vec
        return [_execute(snapshot, p, vec, q) for p, vec, q in zip(plans, found, queries, strict=True)]

    def row(self, row_id: str) -> dict[str, Any] | None:
        """Every stored column but the vector of the row with this id, or None when there is none."""
        if not isinstance(row_id, str) or not row_id:
            return None
        snapshot = self._snapshot
        key = row_key(row_id)
        for reader in snapshot.readers.values():
            if reader.offsets([key])[0] >= 0:
                row = reader.rows_of([key])[key]
                return row if row["id"] == row_id else None
        return None


def _find(snapshot: Snapshot, row_id: str) -> tuple[str, np.ndarray] | None:
    """The shard and stored vector of a row id, or None."""
    key = row_key(row_id)
    for name, reader in snapshot.readers.items():
        vec = reader.vector(key)
        if vec is not None:
            return name, vec
    return None


def _given_vector(snapshot: Snapshot, vec, i: int) -> np.ndarray:
    """A query vector passed to ``query_batch(vectors=)``, checked against the index's dimension."""
    out = np.asarray(vec, dtype=np.float32)
    dim = snapshot.manifest.get("encoder", {}).get("dim")
    if out.ndim != 1 or (dim is not None and out.shape[0] != dim):
        raise PlanError(f"query {i}: a query vector of shape {out.shape}; this index's vectors are ({dim},)")
    return out


def _plan(snapshot: Snapshot, q: Mapping[str, Any]) -> QueryPlan:
    args = {key: value for key, value in q.items() if value is not None}
    like = args.get("like")
    like_shard = None
    if like is not None and isinstance(like, str):
        key = row_key(like)
        like_shard = next((n for n, r in snapshot.readers.items() if r.offsets([key])[0] >= 0), None)
        if args.get("target") is None and like_shard is not None:
            args["target"] = like_shard  # more like this: the same kind of item
    return plan_query(snapshot.manifest["shards"], like_shard=like_shard, **args)


def _execute(snapshot: Snapshot, plan: QueryPlan, vec: np.ndarray, q: Mapping[str, Any]) -> list[Hit]:
    excluded = {row_key(i) for i in plan.exclude_ids}
    # every reference file the query gives (an image and a video both, when it has both) is left out
    refs = {_file_sha256(q.get(m)) for m in ("image", "video")} - {None} if plan.exclude_reference else set()
    per_shard = []
    for s in plan.targets:
        reader = snapshot.readers[s.shard]
        skip = excluded.union(*(reader.keys_with_hash(h) for h in sorted(refs)))
        allowed = None
        if plan.where:
            reader.meta()  # a damaged or pruned table is told as such, not as a bad filter
            try:
                allowed = reader.matching(plan.where)  # kept by the reader for the next query with it
            except Exception as exc:  # LanceDB raises its own classes for SQL it cannot bind
                raise PlanError(f"invalid where filter {plan.where!r}: {exc}") from exc
        found = reader.search(vec, s.k, allowed=allowed, excluded=skip)
        rows = reader.rows_of([key for key, _ in found])
        per_shard.append((s.shard, [(rows[key], score) for key, score in found]))
    ranked = merge_results(plan.merge, plan.k, per_shard)
    return [_hit(shard, row, score, fused, rank) for rank, (shard, row, score, fused) in enumerate(ranked, start=1)]


def _hit(shard: str, row: dict[str, Any], score: float, fused: float | None, rank: int) -> Hit:
    # NaN and Infinity (in rows an older version stored; ingest refuses them now) read as null: JSON has neither;
    # and a lone surrogate as U+FFFD: UTF-8 has none
    raw = row.get("metadata")
    metadata = json.loads(raw, parse_constant=_null, parse_float=_finite) if raw else None
    if raw and "\\ud" in raw:
        metadata = _mended(metadata)
    return Hit(
        id=row["id"],
        score=score,
        rank=rank,
        shard=shard,
        modality=row["modality"],
        path=row.get("path"),
        paths=tuple(row.get("paths") or ()),
        start=row.get("start"),
        end=row.get("end"),
        caption=row.get("caption"),
        text=row.get("text"),
        metadata=metadata,
        fused=fused,
        row=row,
    )
