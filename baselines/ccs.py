"""CCS, coverage-centric coreset selection (Zheng et al., ICLR 2023).

Drop the hardest `beta` fraction by a difficulty score (hard samples are often mislabelled or noisy), split the
remaining score range into `k` equal-width strata, then hand the budget out stratum by stratum from the smallest
to the largest: each gets min(its size, floor(remaining budget / remaining non-empty strata)), drawn uniformly
at random (seeded) inside the stratum. Visiting small strata first lets the budget they cannot use flow to the
big ones, so every score range is covered as evenly as the strata sizes allow.

`coverage_sample` is shared with DEALRec, whose "coverage-enhanced sample selection" is the same procedure.
"""

from __future__ import annotations

import math
import time

import numpy as np

from goracs.selection.base import Selection, SelectionError, Selector, Signals

SCORES = ("grad_norms", "el2n")


def check_fraction(name: str, value: float) -> float:
    """Validate a fraction in [0, 1) and return it as float; ValueError names the parameter."""
    value = float(value)
    if not (0.0 <= value < 1.0) or not math.isfinite(value):
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_positive_int(name: str, value) -> int:
    """Validate a positive integer parameter; ValueError names the parameter."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def hard_prune(scores: np.ndarray, beta: float) -> np.ndarray:
    """Indices that survive dropping the floor(beta * N) highest scores (ties: the higher index goes first)."""
    n = len(scores)
    n_prune = int(math.floor(beta * n))
    # ascending by score, then by index: the last n_prune entries are the hardest
    order = np.lexsort((np.arange(n), scores))
    return np.sort(order[: n - n_prune])


def strata_of(scores: np.ndarray, k: int) -> np.ndarray:
    """Stratum id in 0..k-1 of each score for k equal-width bins over [min, max] (max falls in the last bin)."""
    lo, hi = float(scores.min()), float(scores.max())
    if hi <= lo:
        return np.zeros(len(scores), dtype=np.int64)
    width = (hi - lo) / k
    return np.minimum(np.floor((scores - lo) / width).astype(np.int64), k - 1)


def allocate(sizes: np.ndarray, budget: int) -> np.ndarray:
    """CCS budget allocation: visit strata from smallest to largest (ties by stratum id), each gets
    min(size, floor(remaining budget / remaining non-empty strata))."""
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros(len(sizes), dtype=np.int64)
    nonempty = [s for s in np.lexsort((np.arange(len(sizes)), sizes)) if sizes[s] > 0]
    m = int(budget)
    for r, s in enumerate(nonempty):
        take[s] = min(int(sizes[s]), m // (len(nonempty) - r))
        m -= int(take[s])
    return take


def coverage_sample(scores: np.ndarray, budget: int, beta: float, k: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Hard-prune the top beta fraction of `scores`, stratify the rest into k equal-width strata, and sample
    the CCS allocation uniformly within each stratum. Returns (indices, report)."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = hard_prune(scores, beta)
    if len(keep) < budget:
        raise SelectionError(f"after pruning the hardest beta={beta} fraction only {len(keep)} samples remain, "
                             f"fewer than the budget {budget}: lower beta")
    strata = strata_of(scores[keep], k)
    sizes = np.bincount(strata, minlength=k)
    take = allocate(sizes, budget)
    # the largest stratum is visited last and absorbs the remainder, so a shortfall means a bug
    assert take.sum() == budget, (take.sum(), budget)
    parts = []
    for s in range(k):  # fixed stratum order so one seed always gives the same draws
        if take[s]:
            members = keep[strata == s]
            parts.append(rng.choice(members, size=int(take[s]), replace=False))
    idx = np.concatenate(parts)
    lo, hi = float(scores[keep].min()), float(scores[keep].max())
    report = {"n_pruned": int(len(scores) - len(keep)), "prune_threshold": hi, "score_range": [lo, hi],
              "strata_sizes": sizes.tolist(), "strata_budget": take.tolist()}
    return idx, report


class CCSSelector(Selector):
    """CCS over a difficulty score ("grad_norms" or "el2n"): hard-prune beta, k equal-width strata."""

    name = "ccs"

    def __init__(self, score: str = "grad_norms", beta: float = 0.1, k: int = 50):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score
        self.beta = check_fraction("beta", beta)
        self.k = check_positive_int("k", k)
        self.needs = (score,)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        s = np.asarray(getattr(signals, self.score), dtype=np.float64).reshape(-1)
        idx, report = coverage_sample(s, budget, self.beta, self.k, np.random.default_rng(seed))
        report.update({"score": self.score, "beta": self.beta, "k": self.k, "time_s": time.perf_counter() - t0})
        return Selection(idx, report)
