"""k-center greedy (Sener & Savarese 2018) in embedding space: repeatedly add the point farthest from the
selected set. Keeps one running min-distance vector (N,); never forms an N x N matrix."""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from goracs.selection.base import Selection, Selector, Signals


def _sq_dists_to(x: np.ndarray, sq_norms: np.ndarray, c: np.ndarray, chunk: int) -> np.ndarray:
    """Squared Euclidean distances from every row of x to the point c, in row chunks."""
    out = np.empty(len(x), dtype=np.float64)
    cc = float(c @ c)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = sq_norms[s:s + chunk] - 2.0 * (x[s:s + chunk] @ c) + cc
    return np.maximum(out, 0.0)


def k_center_greedy(x: np.ndarray, budget: int, first: int, chunk: int = 65536,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center picks (in order) starting from `first`, and the covering radius after each pick; stops
    early once every point coincides with a centre (radius 0)."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    picks = np.empty(budget, dtype=np.int64)
    radius = np.empty(budget, dtype=np.float64)
    picks[0] = first
    mind = _sq_dists_to(x, sq, x[first], chunk)
    mind[first] = 0.0
    radius[0] = np.sqrt(mind.max())
    k = 1
    for k in tqdm(range(1, budget), desc="k-center", disable=not progress):
        nxt = int(np.argmax(mind))
        if mind[nxt] <= 0.0:  # all points are covered exactly: nothing farther to add
            return picks[:k], radius[:k]
        picks[k] = nxt
        np.minimum(mind, _sq_dists_to(x, sq, x[nxt], chunk), out=mind)
        mind[nxt] = 0.0
        radius[k] = np.sqrt(mind.max())
    return picks, radius


class KCenterSelector(Selector):
    """k-center greedy over the train embeddings; the seed picks the first centre."""

    name = "kcenter"
    needs = ("embeddings",)

    def __init__(self, chunk: int = 65536, progress: bool = False):
        self.chunk = int(chunk)
        self.progress = bool(progress)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        x = np.asarray(signals.embeddings).reshape(signals.n_train, -1)
        rng = np.random.default_rng(seed)
        first = int(rng.integers(len(x)))
        picks, radius = k_center_greedy(x, budget, first, self.chunk, self.progress)
        n_fill = budget - len(picks)
        if n_fill:  # fewer distinct points than the budget: the rest are unpicked duplicates, chosen at random
            rest = np.setdiff1d(np.arange(len(x)), picks)
            picks = np.concatenate([picks, rng.choice(rest, size=n_fill, replace=False)])
        return Selection(picks, {"time_s": time.perf_counter() - t0, "first_centre": first,
                                 "covering_radius": float(radius[-1]), "zero_radius_fill": int(n_fill)})
