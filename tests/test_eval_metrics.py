"""HR/NDCG against brute force, the rank convention, and AUC/log-loss against scikit-learn."""

import math

import numpy as np
import pytest

from goracs.evaluate.metrics import MetricError, auc_logloss, hr_ndcg, rank_of_target


def _brute(scores_rows, target_cols, k):
    """Reference: sort each candidate list, find the target, count hits and discounted gains."""
    hits, gains = [], []
    for row, t in zip(scores_rows, target_cols):
        order = sorted(range(len(row)), key=lambda j: (row[j], j == t))  # ties: others before the target
        pos = order.index(t)
        hits.append(1.0 if pos < k else 0.0)
        gains.append(1.0 / math.log2(pos + 2) if pos < k else 0.0)
    return sum(hits) / len(hits), sum(gains) / len(gains)


def test_hr_ndcg_matches_brute_force_on_random_rankings():
    rng = np.random.default_rng(0)
    d = rng.random((300, 100)).round(2)  # rounding creates ties
    t = rng.integers(0, 100, size=300)
    ranks = rank_of_target(d, t)
    m = hr_ndcg(ranks, ks=(1, 5, 10, 20))
    for k in (1, 5, 10, 20):
        hr, ndcg = _brute(d.tolist(), t.tolist(), k)
        assert m[f"HR@{k}"] == pytest.approx(hr)
        assert m[f"NDCG@{k}"] == pytest.approx(ndcg)


def test_target_first_and_last():
    d = np.arange(100, dtype=float)
    assert rank_of_target(d, 0) == 0
    assert rank_of_target(d, 99) == 99
    m = hr_ndcg([0, 0, 0])
    assert m == {"HR@5": 1.0, "NDCG@5": 1.0, "HR@10": 1.0, "NDCG@10": 1.0}
    m = hr_ndcg([99, 99])
    assert all(v == 0.0 for v in m.values())
    m = hr_ndcg([0, 4, 5, 9, 10])
    assert m["HR@5"] == pytest.approx(2 / 5) and m["HR@10"] == pytest.approx(4 / 5)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(6)) / 5)


def test_ties_count_against_the_target():
    d = np.zeros(100)
    assert rank_of_target(d, 0) == 99  # a constant scorer earns nothing
    assert hr_ndcg([rank_of_target(d, 3)])["HR@10"] == 0.0


def test_bad_ranks_fail():
    with pytest.raises(MetricError):
        hr_ndcg([])
    with pytest.raises(MetricError):
        hr_ndcg([-1, 2])
    with pytest.raises(MetricError):
        rank_of_target(np.array([0.1, np.nan]), 0)


def test_auc_logloss_match_sklearn():
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1)
    m = auc_logloss(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))
    assert 0.5 < m["auc"] < 1.0


def test_auc_logloss_edge_cases():
    with pytest.warns(UserWarning, match="one class"):
        m = auc_logloss([1, 1, 1], [0.9, 0.8, 0.7])
    assert math.isnan(m["auc"]) and m["logloss"] > 0
    with pytest.raises(MetricError):
        auc_logloss([0, 2], [0.1, 0.2])
    with pytest.raises(MetricError):
        auc_logloss([0, 1], [0.1])
    assert auc_logloss([0, 1], [0.0, 1.0])["logloss"] < 1e-6  # clipped, finite
