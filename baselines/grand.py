"""GraNd (Paul et al. 2021): keep the n samples with the largest gradient norm; also the shared top-n selector."""

from __future__ import annotations

import time

import numpy as np

from goracs.selection.base import Selection, SelectionError, Selector, Signals


def top_n(scores: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the `budget` largest scores; ties go to the lower index (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:budget]


class TopScoreSelector(Selector):
    """Keep the n samples with the largest value of one per-sample signal (`score`). With `stratify` (CTR), the
    top of each class within class budgets proportional to the pool's class shares (baselines.random's rule): on
    real Games CTR the 64 largest gradient norms are all negatives (the starting model prefers "Yes"), so the plain
    selection trains a model that answers "No" to everything; the stratified one asks whether hard samples help
    once the classes are kept."""

    score: str = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.needs = (cls.score,)

    def __init__(self, stratify: bool = False):
        self.stratify = bool(stratify)
        self.needs = (self.score, "labels") if self.stratify else (self.score,)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        s = np.asarray(getattr(signals, self.score))
        report: dict = {}
        if not self.stratify:
            idx = top_n(s, budget)
        else:
            from baselines.random import pool_share_budgets

            labels = np.asarray(signals.labels)
            if labels.ndim != 1 or len(labels) != len(s):
                raise SelectionError(f"stratified {self.name} needs one class label per sample, got shape "
                                     f"{labels.shape} for {len(s)} samples")
            budgets = pool_share_budgets(labels, budget)
            parts = []
            for c, b in budgets.items():
                members = np.flatnonzero(labels == c)
                parts.append(members[top_n(s[members], b)])
            idx = np.concatenate(parts)
            report["class_budgets"] = budgets
        return Selection(idx, {**report, "time_s": time.perf_counter() - t0, "score_threshold": float(s[idx].min()),
                               "mean_score_selected": float(s[idx].mean()), "mean_score_pool": float(s.mean())})


class GraNdSelector(TopScoreSelector):
    """Top-n per-sample gradient norm (the LoRA-B gradient norm of goracs.signals.grads)."""

    name = "grand"
    score = "grad_norms"
