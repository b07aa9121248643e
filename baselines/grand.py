"""GraNd (Paul et al. 2021): keep the n samples with the largest gradient norm; also the shared top-n selector."""

from __future__ import annotations

import time

import numpy as np

from goracs.selection.base import Selection, Selector, Signals


def top_n(scores: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the `budget` largest scores; ties go to the lower index (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:budget]


class TopScoreSelector(Selector):
    """Keep the n samples with the largest value of one per-sample signal (`score`)."""

    score: str = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.needs = (cls.score,)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        s = np.asarray(getattr(signals, self.score))
        idx = top_n(s, budget)
        return Selection(idx, {"time_s": time.perf_counter() - t0, "score_threshold": float(s[idx].min()),
                               "mean_score_selected": float(s[idx].mean()), "mean_score_pool": float(s.mean())})


class GraNdSelector(TopScoreSelector):
    """Top-n per-sample gradient norm (the LoRA-B gradient norm of goracs.signals.grads)."""

    name = "grand"
    score = "grad_norms"
