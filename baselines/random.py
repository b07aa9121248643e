"""Random selection (seeded), optionally stratified by class with budgets proportional to the train shares."""

from __future__ import annotations

import time

import numpy as np

from goracs.selection.base import Selection, SelectionError, Selector, Signals


def pool_share_budgets(labels: np.ndarray, budget: int) -> dict[int, int]:
    """Per-class budgets proportional to the class shares of `labels` (the pool itself; rounded, the last class
    takes the remainder), moved to other classes where a class has fewer samples than its share.

    Not goracs.selection.label.class_budgets, on purpose: that one is GORACS's rule (the authors'): shares of the
    validation labels, the first class takes the remainder, at least one sample per class. The two give different
    budgets, e.g. for class sizes 3, 30, 3 and budget 33 this gives {0: 3, 1: 28, 2: 2} and GORACS's rule
    {0: 2, 1: 28, 2: 3}; the stratified random and Moderate baselines keep this rule so that their selections stay
    as they were."""
    classes, counts = np.unique(labels, return_counts=True)
    n = counts.sum()
    want = [int(round(budget * c / n)) for c in counts[:-1]]
    want.append(budget - sum(want))
    want = np.minimum(np.maximum(want, 0), counts)
    short = budget - int(want.sum())
    while short > 0:  # hand leftover budget to the classes with spare samples, largest spare first
        spare = counts - want
        k = int(np.argmax(spare))
        take = min(short, int(spare[k]))
        want[k] += take
        short -= take
    return {int(c): int(w) for c, w in zip(classes, want)}


class RandomSelector(Selector):
    """Uniformly random subset for a seed; `stratify` keeps the train class shares (needs labels)."""

    name = "random"

    def __init__(self, stratify: bool = False):
        self.stratify = bool(stratify)
        self.needs = ("labels",) if self.stratify else ()

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        n = signals.n_train
        report: dict = {"stratify": self.stratify}
        if not self.stratify:
            idx = rng.choice(n, size=budget, replace=False)
        else:
            labels = np.asarray(signals.labels)
            if labels.ndim != 1:
                raise SelectionError(f"stratified random needs 1-D class labels, got shape {labels.shape}")
            budgets = pool_share_budgets(labels, budget)
            parts = []
            for c, b in budgets.items():
                members = np.flatnonzero(labels == c)
                parts.append(rng.choice(members, size=b, replace=False))
            idx = np.concatenate(parts)
            report["class_budgets"] = budgets
        report["time_s"] = time.perf_counter() - t0
        return Selection(idx, report)
