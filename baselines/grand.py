"""GraNd (Paul et al. 2021): keep the n samples with the largest gradient norm."""

from __future__ import annotations

import time

import numpy as np

from goracs.selection.base import Selection, Selector, Signals, register


def top_n(scores: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the `budget` largest scores; ties go to the lower index (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:budget]


@register("grand")
class GraNdSelector(Selector):
    """Top-n per-sample gradient norm (the LoRA-B gradient norm of goracs.signals.grads)."""

    needs = ("grad_norms",)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        g = np.asarray(signals.grad_norms)
        idx = top_n(g, budget)
        return Selection(idx, {"time_s": time.perf_counter() - t0, "score_threshold": float(g[idx].min()),
                               "mean_score_selected": float(g[idx].mean()), "mean_score_pool": float(g.mean())})
