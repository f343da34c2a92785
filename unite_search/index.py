"""``Index``: open a built index and query it with any mix of text, image and video.

>>> idx = Index.open("indexes/media")                                        # doctest: +SKIP
>>> idx.query(video="clip.mp4", text="same scene at night", k=5)             # doctest: +SKIP
>>> print(idx.plan(text="a red fox").explain())                              # doctest: +SKIP

The model loads on the first query that needs encoding (``like=`` and ``plan()`` need none). Reads
use the table versions and FAISS files the manifest names, so an ingest running meanwhile is not
seen until it publishes (call :meth:`Index.refresh`).

Each shard's FAISS index and its rows' metadata (every column but the vector, roughly 200-300
bytes a row against the 6 KB of a 1536-d vector) are loaded into memory on the shard's first
search, so a query costs no database round trip beyond an optional ``where`` filter.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .corpus import file_sha256
from .modality import Item
from .planner import RRF_K, PlanError, QueryPlan, ShardSearch, plan_query
from .store import IndexStore, _sql_list, row_key

ROW_COLUMNS = [
    "id", "key", "modality", "source", "path", "paths", "content_hash", "size", "mtime", "width", "height",
    "duration", "frames", "start", "end", "char_start", "char_end", "text", "caption", "metadata",
]  # fmt: skip
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
        out = asdict(self)
        out["paths"] = list(self.paths)
        out.pop("row")
        return out


def _file_sha256(value) -> str | None:
    """Content hash of a query's reference file, to exclude it from its own results."""
    if not isinstance(value, (str, os.PathLike)) or not os.path.isfile(value):
        return None  # in-memory images and frame lists have no file to match
    return file_sha256(value)


class Index:
    """A built index, opened for search. Create with :meth:`Index.open`."""

    def __init__(self, store: IndexStore, manifest: dict[str, Any], *, model, device, dtype, encoder):
        self.store = store
        self.manifest = manifest
        self._model = model
        self._device = device
        self._dtype = dtype
        self._encoder = encoder
        self._tables: dict[str, Any] = {}
        self._faiss: dict[str, Any] = {}
        self._meta: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}
        self._lock = threading.RLock()  # lazy loads happen once, whichever thread queries first
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
        encoder=None,
    ) -> Index:
        """Open ``path``. The index's own model is used unless ``model``/``encoder`` says otherwise
        (and then it must match the one the index was built with)."""
        store = IndexStore(os.path.expanduser(path))
        return cls(store, store.require_manifest(), model=model, device=device, dtype=dtype, encoder=encoder)

    def refresh(self) -> None:
        """Re-read the manifest: see what an ingest published since the index was opened."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        self.manifest = self.store.require_manifest()
        self._tables.clear()
        self._faiss.clear()
        self._meta.clear()

    @property
    def shards(self) -> dict[str, int]:
        """Rows per published shard."""
        return {name: int(entry["rows"]) for name, entry in sorted(self.manifest["shards"].items())}

    def __repr__(self) -> str:
        return f"Index({str(self.store.path)!r}, shards={self.shards})"

    # ------------------------------------------------------------------ encoder
    def _check(self, encoder) -> None:
        hint = (
            "Query with the model the index was built with (Index.open without model=), "
            f"or rebuild the index with this one (rm -r {self.store.path}, then ingest)."
        )
        self.store.check(self.manifest, encoder.settings, self.manifest["ingest"], self.manifest["corpus"], hint=hint)

    @property
    def encoder(self):
        """The encoder, loaded on first use: the index's own model and preprocessing settings."""
        with self._lock:
            return self._load_encoder()

    def _load_encoder(self):
        if self._encoder is None:
            from .encoder import Encoder
            from .settings import EncoderSettings

            recorded = self.manifest["encoder"]
            names = {f.name for f in fields(EncoderSettings)}
            settings = EncoderSettings(**{k: v for k, v in recorded.items() if k in names})
            encoder = Encoder.load(
                self._model or recorded["model_id"], device=self._device, dtype=self._dtype, settings=settings
            )
            self._check(encoder)
            self._encoder = encoder
        return self._encoder

    # ------------------------------------------------------------------- shards
    def _table(self, shard: str):
        with self._lock:
            if shard not in self._tables:
                self._tables[shard] = self.store.table(shard, version=self.manifest["shards"][shard]["version"])
            return self._tables[shard]

    def _index(self, shard: str):
        with self._lock:
            if shard not in self._faiss:
                self._faiss[shard] = self.store.load_faiss(shard)
            return self._faiss[shard]

    def _find(self, row_id: str) -> tuple[str, np.ndarray] | None:
        for shard in self.manifest["shards"]:
            rows = self._table(shard).search().where(f"id = {_sql_list([row_id])}").select(["vector"]).limit(1)
            got = rows.to_arrow()
            if got.num_rows:
                return shard, np.asarray(got.column("vector")[0].as_py(), dtype=np.float32)
        return None

    def _keys_where(self, shard: str, predicate: str) -> np.ndarray:
        try:
            got = self._table(shard).search().where(predicate).select(["key"]).limit(None).to_arrow()
        except Exception as exc:  # LanceDB raises its own classes for SQL it cannot parse or bind
            raise PlanError(f"invalid where filter {predicate!r}: {exc}") from exc
        return got.column("key").to_numpy().astype(np.int64)

    def _search(self, s: ShardSearch, vec: np.ndarray, where, excluded: set[int], ref_hash) -> list[tuple[int, float]]:
        import faiss

        index = self._index(s.shard)
        if index.ntotal == 0:
            return []
        if ref_hash is not None:
            excluded = excluded | self._keys_with_hash(s.shard, ref_hash)
        selector, matching = None, index.ntotal
        if where:
            allowed = np.setdiff1d(self._keys_where(s.shard, where), np.fromiter(excluded, np.int64))
            if allowed.size == 0:
                return []
            selector, matching = faiss.IDSelectorBatch(allowed), allowed.size
        elif excluded:
            inner = faiss.IDSelectorBatch(np.fromiter(excluded, np.int64))
            selector = faiss.IDSelectorNot(inner)
            selector.inner = inner  # keep the wrapped selector alive as long as the outer one
            matching = index.ntotal - len(excluded)
        k = min(s.k, index.ntotal)
        if s.index != "ivf":
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            return _pairs(*index.search(vec[None, :], k, params=params))
        found = _pairs(*index.search(vec[None, :], k, params=faiss.SearchParametersIVF(sel=selector, nprobe=s.nprobe)))
        if len(found) < min(k, matching):
            # a selective filter can leave the probed lists short of k matches: probe them all
            params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nlist)
            found = _pairs(*index.search(vec[None, :], k, params=params))
        return found

    def _metadata(self, shard: str):
        """(rows without vectors, their keys sorted, the row of each sorted key), loaded once."""
        with self._lock:
            if shard not in self._meta:
                table = self._table(shard).search().select(ROW_COLUMNS).limit(None).to_arrow().combine_chunks()
                keys = table.column("key").to_numpy()
                order = np.argsort(keys, kind="stable")
                self._meta[shard] = (table, keys[order], order)
            return self._meta[shard]

    def _rows(self, shard: str, keys: Sequence[int]) -> dict[int, dict[str, Any]]:
        if not keys:
            return {}
        import pyarrow as pa

        table, sorted_keys, order = self._metadata(shard)
        wanted = np.asarray(keys, dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
        found = sorted_keys[at] == wanted
        rows = table.take(pa.array(order[at[found]])).to_pylist()
        return {row["key"]: row for row in rows}

    def _keys_with_hash(self, shard: str, content_hash: str) -> set[int]:
        import pyarrow.compute as pc

        table = self._metadata(shard)[0]
        mask = pc.equal(table.column("content_hash"), content_hash)
        return set(table.filter(mask).column("key").to_pylist())

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
        like_shard = None
        if like is not None:
            found = self._find(like)
            like_shard = found[0] if found else None
            if target is None and like_shard is not None:
                target = like_shard  # more like this: the same kind of item
        return plan_query(
            self.manifest["shards"],
            text=text,
            image=image,
            video=video,
            like=like,
            like_shard=like_shard,
            target=target,
            k=k,
            instruction=instruction,
            where=where,
            exclude=exclude,
        )

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
        ``where`` is a LanceDB SQL filter on the stored columns (``"width >= 1000"``,
        ``"path LIKE 'trips/%'"``) applied before the top-k cut; ``exclude`` drops row ids.
        """
        query = {"text": text, "image": image, "video": video, "like": like, "target": target, "k": k}
        query.update(instruction=instruction, where=where, exclude=exclude)
        return self.query_batch([query])[0]

    def query_batch(self, queries: Sequence[Mapping[str, Any]]) -> list[list[Hit]]:
        """Run many queries; those that need encoding share encoder batches."""
        plans, vectors, encode_at, items = [], [], [], []
        for i, q in enumerate(queries):
            unknown = set(q) - _QUERY_KEYS
            if unknown:
                raise PlanError(f"query {i}: unknown key(s) {sorted(unknown)}; a query takes {sorted(_QUERY_KEYS)}")
            plan = self.plan(**{key: value for key, value in q.items() if value is not None})
            plans.append(plan)
            if plan.like is not None:
                vectors.append(self._find(plan.like)[1])
            else:
                vectors.append(None)
                encode_at.append(i)
                items.append(Item(q.get("text"), q.get("image"), q.get("video"), q.get("instruction")))
        if items:
            for i, vec in zip(encode_at, self.encoder.encode(items), strict=True):
                vectors[i] = vec
        return [self._execute(plan, vec, q) for plan, vec, q in zip(plans, vectors, queries, strict=True)]

    def _execute(self, plan: QueryPlan, vec: np.ndarray, q: Mapping[str, Any]) -> list[Hit]:
        excluded = {row_key(i) for i in plan.exclude_ids}
        ref_hash = None
        if plan.exclude_reference:
            ref_hash = _file_sha256(q.get("video") if q.get("video") is not None else q.get("image"))
        per_shard: list[tuple[str, list[tuple[dict, float]]]] = []
        for s in plan.targets:
            found = self._search(s, vec, plan.where, excluded, ref_hash)
            rows = self._rows(s.shard, [key for key, _ in found])
            per_shard.append((s.shard, [(rows[key], score) for key, score in found if key in rows]))
        if plan.merge == "cosine":
            ranked = [(shard, row, score, None) for shard, hits in per_shard for row, score in hits]
            ranked.sort(key=lambda h: -h[2])
        else:
            fused: dict[tuple[str, str], list] = {}
            for shard, hits in per_shard:
                for rank, (row, score) in enumerate(hits, start=1):
                    entry = fused.setdefault((shard, row["id"]), [shard, row, score, 0.0])
                    entry[3] += 1.0 / (RRF_K + rank)
            ranked = sorted(fused.values(), key=lambda h: (-h[3], -h[2]))
        return [_hit(shard, row, score, fused_score, rank) for rank, (shard, row, score, fused_score) in
                enumerate(ranked[: plan.k], start=1)]  # fmt: skip


def _pairs(scores: np.ndarray, keys: np.ndarray) -> list[tuple[int, float]]:
    """(key, score) of one query's results, FAISS's -1 padding dropped."""
    return [(int(key), float(score)) for key, score in zip(keys[0], scores[0], strict=True) if key >= 0]


def _hit(shard: str, row: dict[str, Any], score: float, fused: float | None, rank: int) -> Hit:
    metadata = json.loads(row["metadata"]) if row.get("metadata") else None
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
