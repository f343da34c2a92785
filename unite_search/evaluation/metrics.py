"""Retrieval metrics, as percentages. Exact search over score matrices (galleries are small).

Ties follow the upstream argmax-first behaviour: a gold item's rank is 1 + the number of candidates
scoring strictly higher than it, so a tie with the gold counts in the gold's favour. With several
positives, a query's rank is that of its best-scoring positive (the "any positive" rule). Scores come from
:func:`similarities`, so that identical vectors (a gallery holding one item twice) tie exactly: a matrix
product can score two copies one float apart, as its blocks fall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

COVR_MASK = -10.0


def _finite(scores: np.ndarray) -> np.ndarray:
    """A NaN gold would rank first (nothing compares above it): refused instead."""
    if not np.isfinite(scores).all():
        raise ValueError("scores that are not finite (NaN or infinity): no recall can be computed from them")
    return scores


def similarities(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``queries @ candidates.T``, each distinct vector scored once: identical rows or columns get identical
    scores (``(len(queries), len(candidates))``)."""
    rows, row_of = np.unique(np.asarray(queries), axis=0, return_inverse=True)
    cols, col_of = np.unique(np.asarray(candidates), axis=0, return_inverse=True)
    return (rows @ cols.T)[np.ix_(row_of.reshape(-1), col_of.reshape(-1))]


def gold_ranks(scores: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """1-based rank of each row's best positive: 1 + #(scores strictly above it)."""
    scores = _finite(np.asarray(scores, dtype=np.float64))
    ranks = np.empty(len(scores), dtype=np.int64)
    for i, pos in enumerate(positives):
        if len(pos) == 0:
            raise ValueError(f"query {i} has no positive")
        best = scores[i, list(pos)].max()
        ranks[i] = 1 + int((scores[i] > best).sum())
    return ranks


def recall(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    return {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}


def rank_stats(ranks: np.ndarray) -> dict[str, float]:
    return {"MdR": float(np.median(ranks)), "MnR": float(np.mean(ranks))}


def two_way(
    text_embs: np.ndarray, item_embs: np.ndarray, text_item: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """Text-to-item and item-to-text recall; ``text_item[t]`` is the item text ``t`` describes.

    An item described by several texts is a hit (item-to-text) if any of them is retrieved.
    """
    scores = similarities(text_embs, item_embs)  # (texts, items)
    t2x = gold_ranks(scores, [[i] for i in text_item])
    by_item: list[list[int]] = [[] for _ in range(len(item_embs))]
    for t, i in enumerate(text_item):
        by_item[i].append(t)
    x2t = gold_ranks(scores.T, by_item)
    return {
        "t2x": {**recall(t2x, ks), **rank_stats(t2x)},
        "x2t": {**recall(x2t, ks), **rank_stats(x2t)},
    }


def covr(sim: np.ndarray, reference_ids: Sequence[str], target_ids: Sequence[str]) -> dict[str, float]:
    """WebVid-CoVR: mask a query's own reference video wherever it is another row's target; gold = diagonal.

    ``sim[i, j] = -10`` wherever ``reference_ids[i] == target_ids[j]``. Reports R@1/5/10/50, meanR3
    (mean of R@1/5/10) and meanR4 (with R@50).
    """
    sim = np.array(sim, dtype=np.float64)
    refs = np.asarray(reference_ids, dtype=object)[:, None]
    targets = np.asarray(target_ids, dtype=object)[None, :]
    sim[refs == targets] = COVR_MASK
    ranks = gold_ranks(sim, [[i] for i in range(len(sim))])
    out = recall(ranks, (1, 5, 10, 50))
    out["meanR3"] = float(np.mean([out["R@1"], out["R@5"], out["R@10"]]))
    out["meanR4"] = float(np.mean([out["R@1"], out["R@5"], out["R@10"], out["R@50"]]))
    return out


def mmeb_correct(query: np.ndarray, candidates: np.ndarray) -> bool:
    """MMEB's local re-ranking: correct iff candidate 0 (the gold) scores highest (first wins ties)."""
    return int(np.argmax(_finite(similarities(query[None, :], candidates)[0]))) == 0


MMEB_CATEGORIES: Mapping[str, tuple[str, ...]] = {
    "Classification": ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365",
                       "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"),
    "VQA": ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz",
            "GQA", "TextVQA"),
    "Retrieval": ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS",
                  "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"),
    "Grounding": ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"),
}  # fmt: skip
MMEB_OOD = frozenset({"Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211", "ScienceQA", "VizWiz",
                      "GQA", "TextVQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "RefCOCO", "RefCOCO-Matching",
                      "Visual7W-Pointing"})  # fmt: skip


def mmeb_summary(per_dataset: Mapping[str, float]) -> dict[str, float | None]:
    """Unweighted means per category, IND (seen in MMEB-train) / OOD and overall, over the datasets run."""

    def mean(names) -> float | None:
        values = [per_dataset[n] for n in names if n in per_dataset]
        return float(np.mean(values)) if values else None

    out: dict[str, float | None] = {cat: mean(names) for cat, names in MMEB_CATEGORIES.items()}
    known = [n for names in MMEB_CATEGORIES.values() for n in names]
    out["IND"] = mean([n for n in known if n not in MMEB_OOD])
    out["OOD"] = mean([n for n in known if n in MMEB_OOD])
    out["Overall"] = mean(list(per_dataset))
    return out


def mmeb_coverage(per_dataset: Mapping[str, float]) -> dict[str, tuple[int, int]]:
    """Each :func:`mmeb_summary` mean's (datasets scored, datasets it stands for): a mean over fewer
    datasets than the paper's is not comparable with the paper's number."""
    known = [n for names in MMEB_CATEGORIES.values() for n in names]
    extra = [n for n in per_dataset if n not in known]  # subsets beyond MMEB's 36 count in Overall only
    groups = {**MMEB_CATEGORIES, "IND": [n for n in known if n not in MMEB_OOD], "OOD": sorted(MMEB_OOD)}
    out = {name: (sum(n in per_dataset for n in names), len(names)) for name, names in groups.items()}
    out["Overall"] = (len(per_dataset), len(known) + len(extra))
    return out
