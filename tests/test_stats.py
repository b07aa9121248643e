"""Intervals for results tables and the full-data selector (issue 16 groundwork)."""

from __future__ import annotations

import numpy as np
import pytest

from goracs.report.stats import auc, bootstrap_ci, mean_ci, paired_difference
from goracs.selection.base import Signals


def test_t_interval_of_a_mean_by_hand():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, df 2) * sd / sqrt(n), sd = 1
    assert m == 2.0 and lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert np.isnan(mean_ci([0.7])[1])


def test_bootstrap_interval_holds_the_value_and_shrinks_with_samples():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = y + rng.normal(0, 1.0, 400)  # informative scores: AUC about 0.76
    v, lo, hi = bootstrap_ci(y, s, n_resamples=500)
    assert lo < v < hi and 0.65 < v < 0.85 and hi - lo < 0.12
    v2, lo2, hi2 = bootstrap_ci(y[:100], s[:100], n_resamples=500)
    assert hi2 - lo2 > hi - lo  # fewer test samples, a wider interval


def test_paired_difference_known_answers():
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 150)
    perfect = [y + 0.1 * rng.random(300) for _ in range(3)]  # AUC 1 for every seed
    coin = [rng.random(300) for _ in range(3)]  # AUC about 0.5
    d, lo, hi = paired_difference(y, perfect, coin, n_resamples=500)
    assert d == pytest.approx(1.0 - np.mean([auc(y, c) for c in coin]))
    assert 0.4 < d < 0.6 and lo > 0.3 and hi < 0.7
    # a selector against itself: the difference is exactly 0 in every resample
    d0, lo0, hi0 = paired_difference(y, coin, coin, n_resamples=200)
    assert d0 == 0.0 and lo0 == 0.0 and hi0 == 0.0
    with pytest.raises(ValueError, match="one score per test sample"):
        paired_difference(y, [y[:10]], coin)


def test_full_selector_takes_the_whole_pool_whatever_the_budget():
    from goracs.selection.build import make_selector

    sel = make_selector("full")
    out = sel.select(Signals(n=17), 4, seed=3)
    assert out.indices.tolist() == list(range(17)) and out.report["budget_requested"] == 4
    assert sel.needs == ()


def test_rank_auc_is_scikit_learns_with_ties():
    from sklearn.metrics import roc_auc_score

    from goracs.report.stats import auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 2)  # rounding makes many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auc(np.ones(4), np.arange(4.0)))


def test_spearman_interval_known_cases():
    from scipy.stats import spearmanr

    from goracs.report.stats import spearman_ci

    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    rho, lo, hi = spearman_ci(x, 2 * x + 0.1 * rng.normal(size=40), n_resamples=500)
    assert rho == pytest.approx(spearmanr(x, 2 * x + 0.1 * rng.normal(size=40)).statistic, abs=0.05)
    assert 0.8 < lo <= rho <= hi <= 1.0
    rho, lo, hi = spearman_ci(x, rng.normal(size=40), n_resamples=500)  # independent: the interval holds 0
    assert lo < 0 < hi
    assert np.isnan(spearman_ci([1.0, 2.0], [2.0, 1.0])[0])


def test_intervals_of_degenerate_cases():
    from goracs.report.stats import spearman_ci

    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)  # no spread over seeds: the value itself, not nan
    # four subsets: some resamples repeat one pair (rho undefined); the interval comes from the others
    rho, lo, hi = spearman_ci([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 5.0], n_resamples=500)
    assert rho == 1.0 and np.isfinite(lo) and np.isfinite(hi) and lo <= hi == 1.0
