"""Metric functions on hand-made score matrices; every expected value is worked out here."""

import numpy as np
import pytest

from unite_search.evaluation import metrics


def test_ties_count_in_the_golds_favour():
    scores = np.array([[0.5, 0.5, 0.2], [0.1, 0.9, 0.9]])
    # row 0: gold 1 ties with 0, nothing strictly above -> rank 1; row 1: gold 0, two above -> rank 3
    assert metrics.gold_ranks(scores, [[1], [0]]).tolist() == [1, 3]
    assert metrics.recall(np.array([1, 3]), (1, 5)) == {"R@1": 50.0, "R@5": 100.0}


def test_any_positive_rule():
    scores = np.array([[0.9, 0.1, 0.8, 0.7]])
    # positives 1 and 3: the best of them (0.7) has two above it -> rank 3
    assert metrics.gold_ranks(scores, [[1, 3]]).tolist() == [3]
    with pytest.raises(ValueError, match="no positive"):
        metrics.gold_ranks(scores, [[]])


def test_two_way_with_several_captions_per_item():
    # 3 texts, 2 items; texts 0 and 1 describe item 0, text 2 describes item 1
    texts = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    items = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = metrics.two_way(texts, items, [0, 0, 1], ks=(1,))
    # t2x: text 0 -> item 0 (1.0 vs 0.0) hit; text 1 -> 0.6 vs 0.8 miss (rank 2); text 2 hit
    assert out["t2x"]["R@1"] == pytest.approx(200 / 3)
    assert out["t2x"]["MdR"] == 1.0 and out["t2x"]["MnR"] == pytest.approx(4 / 3)
    # x2t: item 0's texts score 1.0, 0.6, 0.0 -> text 0 first: hit; item 1: 0.0, 0.8, 1.0 -> text 2: hit
    assert out["x2t"]["R@1"] == 100.0


def test_covr_mask_and_means():
    # query 0's reference is target 1's video: without the mask it would outrank the gold
    sim = np.array([[0.5, 0.9, 0.1], [0.2, 0.6, 0.3], [0.4, 0.1, 0.35]])
    refs = ["vidB", "vidX", "vidY"]
    targets = ["vidA", "vidB", "vidC"]
    out = metrics.covr(sim, refs, targets)
    # masked: row 0 gold 0.5 now first (0.9 -> -10); row 1 gold first; row 2 gold 0.35 < 0.4 -> rank 2
    assert out["R@1"] == pytest.approx(200 / 3) and out["R@5"] == 100.0 and out["R@50"] == 100.0
    assert out["meanR3"] == pytest.approx((200 / 3 + 100 + 100) / 3)
    assert out["meanR4"] == pytest.approx((200 / 3 + 300) / 4)
    unmasked = metrics.covr(sim, ["none"] * 3, targets)
    assert unmasked["R@1"] == pytest.approx(100 / 3)  # row 0 then ranks second


def test_mmeb_gold_is_candidate_zero_and_first_wins_ties():
    q = np.array([1.0, 0.0])
    assert metrics.mmeb_correct(q, np.array([[0.7, 0.7], [0.7, 0.1], [0.2, 0.9]]))  # tie at 0.7: index 0 wins
    assert not metrics.mmeb_correct(q, np.array([[0.5, 0.0], [0.9, 0.0]]))


@pytest.mark.parametrize(("dim", "n"), [(1536, 7), (1536, 33), (896, 772), (3584, 33)])
def test_identical_vectors_tie_exactly_so_a_copy_of_the_gold_never_beats_it(dim, n):
    """A gallery holding an item twice gives both copies one vector; a float32 matrix product can still score
    them one float apart (as its blocks fall), and the copy then ranked above the gold."""
    rng = np.random.default_rng(dim + n)
    unit = lambda v: (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    query, gold = unit(rng.standard_normal(dim)), unit(rng.standard_normal(dim))
    copies = np.repeat(gold[None], n, axis=0)
    assert metrics.mmeb_correct(query, copies)
    texts = unit(rng.standard_normal((n, dim)))
    assert metrics.two_way(texts, copies, list(range(n)))["t2x"]["R@1"] == 100.0
    scores = metrics.similarities(texts, copies)
    assert (scores == scores[:, :1]).all() and scores.dtype == np.float32
    np.testing.assert_allclose(scores, texts @ copies.T, atol=1e-6)


def test_mmeb_summary_means():
    per = {"ImageNet-1K": 80.0, "Place365": 40.0, "CIRR": 60.0, "MSCOCO": 90.0, "MyOwnSet": 10.0}
    out = metrics.mmeb_summary(per)
    assert out["Classification"] == 60.0 and out["Retrieval"] == 60.0 and out["Grounding"] == 90.0
    assert out["VQA"] is None
    assert out["IND"] == pytest.approx((80 + 60 + 90) / 3) and out["OOD"] == 40.0
    assert out["Overall"] == pytest.approx(56.0)  # unweighted over every dataset run
    assert sum(len(v) for v in metrics.MMEB_CATEGORIES.values()) == 36 and len(metrics.MMEB_OOD) == 16
