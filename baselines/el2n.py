"""EL2N (Paul et al. 2021): keep the n samples with the largest prediction-error norm."""

from __future__ import annotations

import time

import numpy as np

from baselines.grand import top_n
from goracs.selection.base import Selection, Selector, Signals, register


@register("el2n")
class EL2NSelector(Selector):
    """Top-n EL2N score (goracs.signals.el2n, after the configured warm-up)."""

    needs = ("el2n",)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        s = np.asarray(signals.el2n)
        idx = top_n(s, budget)
        return Selection(idx, {"time_s": time.perf_counter() - t0, "score_threshold": float(s[idx].min()),
                               "mean_score_selected": float(s[idx].mean()), "mean_score_pool": float(s.mean())})
