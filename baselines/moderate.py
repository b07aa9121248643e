"""Moderate coreset (Xia et al., ICLR 2023): keep the samples of moderate difficulty, measured as the distance
of a sample's embedding to its class prototype.

Per class, the prototype is the per-dimension median of the class's embeddings (robust to outliers, as in the
paper); each sample's score is its L2 distance to the prototype. The class keeps the b_c samples in the middle of
its distance ranking: sort by distance (ties by index) and take the contiguous window of b_c ranks centred on the
median rank, which is what the authors' code does with the quantile band [0.5 - r/2, 0.5 + r/2]. The kept
distances therefore straddle the class's median distance.

Classes: CTR uses `labels`; SeqRec has no class labels (next-item targets are not classes with enough members
for a prototype), so the whole pool is one class. The budget is split across classes in proportion to the train
class sizes (rounded; the last class takes the remainder). The selection uses no randomness: the seed is unused.
"""

from __future__ import annotations

import time

import numpy as np

from baselines.random import pool_share_budgets
from goracs.selection.base import Selection, SelectionError, Selector, Signals


def prototype_distances(x: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension median prototype of the rows of x and each row's L2 distance to it."""
    proto = np.median(x, axis=0)
    d = np.empty(len(x), dtype=np.float64)
    for s in range(0, len(x), chunk):  # chunks bound the temporary (chunk x dim) difference array
        diff = x[s:s + chunk].astype(np.float64) - proto
        d[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return proto, d


def middle_window(dist: np.ndarray, b: int) -> np.ndarray:
    """Positions of the b entries in the middle of the ascending distance ranking (ties by position)."""
    order = np.lexsort((np.arange(len(dist)), dist))
    start = (len(dist) - b) // 2
    return order[start:start + b]


class ModerateSelector(Selector):
    """Moderate-DS: per class, the samples whose distance to the median prototype is nearest the median."""

    name = "moderate"
    needs = ("embeddings",)

    def __init__(self, use_labels: bool = True, chunk: int = 65536):
        self.use_labels = bool(use_labels)
        if int(chunk) < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
        self.chunk = int(chunk)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        x = np.asarray(signals.embeddings).reshape(signals.n_train, -1)
        if self.use_labels and signals.labels is not None:
            labels = np.asarray(signals.labels)
            if labels.ndim != 1 or len(labels) != len(x):
                raise SelectionError(f"labels must be 1-D and aligned with the pool, got shape {labels.shape}")
        else:  # SeqRec (or labels switched off): one class
            labels = np.zeros(len(x), dtype=np.int64)
        budgets = pool_share_budgets(labels, budget)
        parts, per_class = [], {}
        for c, b in budgets.items():
            members = np.flatnonzero(labels == c)
            _, d = prototype_distances(x[members], self.chunk)
            if b == 0:
                continue
            pick = middle_window(d, b)
            parts.append(members[pick])
            per_class[c] = {"budget": b, "size": int(len(members)), "median_distance": float(np.median(d)),
                            "kept_distance_range": [float(d[pick].min()), float(d[pick].max())]}
        idx = np.concatenate(parts)
        return Selection(idx, {"classes": per_class, "time_s": time.perf_counter() - t0})
