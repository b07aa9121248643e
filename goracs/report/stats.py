"""Uncertainty for results tables: a t interval of a mean over seeds, and bootstrap intervals over test samples
(scipy.stats.bootstrap) for one metric and for the paired difference of two selectors pooled over seeds."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval of the mean of `values` (e.g. one metric over seeds); with one
    value the interval is (nan, nan)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    m = float(x.mean())
    if x.size < 2:
        return m, float("nan"), float("nan")
    if np.all(x == x[0]):  # no spread: the interval is the value itself (scipy would give nan)
        return m, m, m
    lo, hi = stats.t.interval(level, df=x.size - 1, loc=m, scale=stats.sem(x))
    return m, float(lo), float(hi)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic from average ranks: scikit-learn's roc_auc_score to rounding, ties
    included, and ~20x faster on a thousand samples (the bootstraps call it tens of thousands of times)."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(np.asarray(scores, dtype=np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_ci(labels: Sequence[int], scores: Sequence[float], metric: Callable = auc, level: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high): the metric on the test samples and its percentile bootstrap interval over them."""
    from scipy import stats

    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    res = stats.bootstrap((y, s), lambda a, b: metric(a, b), paired=True, vectorized=False,
                          n_resamples=n_resamples, confidence_level=level, method="percentile",
                          random_state=np.random.default_rng(seed))
    return metric(y, s), float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(labels: Sequence[int], scores_a: Sequence[Sequence[float]],
                      scores_b: Sequence[Sequence[float]], metric: Callable = auc, level: float = 0.95,
                      n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high) of mean_seeds metric(a) - mean_seeds metric(b) on the same test samples: `scores_a`
    and `scores_b` hold one score array per seed (the seeds of selector a and of selector b, e.g. random). The
    bootstrap resamples test samples, the same ones for every seed of both selectors (paired), so the interval
    is that of the difference, not of two separate means."""
    from scipy import stats

    y = np.asarray(labels)
    A = [np.asarray(s, dtype=np.float64) for s in scores_a]
    B = [np.asarray(s, dtype=np.float64) for s in scores_b]
    if not A or not B:
        raise ValueError("paired_difference: each selector needs at least one seed's scores")
    if any(len(s) != len(y) for s in A + B):
        raise ValueError("paired_difference: every score array must have one score per test sample")
    na = len(A)

    def stat(yy, *ss):
        return float(np.mean([metric(yy, s) for s in ss[:na]]) - np.mean([metric(yy, s) for s in ss[na:]]))

    res = stats.bootstrap((y, *A, *B), stat, paired=True, vectorized=False, n_resamples=n_resamples,
                          confidence_level=level, method="percentile", random_state=np.random.default_rng(seed))
    return stat(y, *A, *B), float(res.confidence_interval.low), float(res.confidence_interval.high)


def spearman_ci(x: Sequence[float], y: Sequence[float], level: float = 0.95, n_resamples: int = 2000,
                seed: int = 0) -> tuple[float, float, float]:
    """(rho, low, high): Spearman's rank correlation of paired values (e.g. each fine-tuned subset's POO and its
    test loss) and its percentile bootstrap interval over the pairs; (nan, nan, nan) with fewer than 3 pairs."""
    from scipy import stats

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("spearman_ci: x and y must be equal-length 1-d sequences")
    if a.size < 3:
        return float("nan"), float("nan"), float("nan")

    def rho(u, v):
        return float(stats.spearmanr(u, v).statistic)

    res = stats.bootstrap((a, b), rho, paired=True, vectorized=False, n_resamples=n_resamples,
                          confidence_level=level, method="percentile", random_state=np.random.default_rng(seed))
    # a resample of few pairs can repeat one pair throughout (no ranks, rho undefined): percentiles of the others
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if not np.isfinite(dist).any():
        return rho(a, b), float("nan"), float("nan")
    lo, hi = np.nanpercentile(dist, [50 * (1 - level), 50 * (1 + level)])
    return rho(a, b), float(lo), float(hi)
