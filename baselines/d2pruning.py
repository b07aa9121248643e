"""D2-Pruning (Maharana et al., ICLR 2024): message passing of difficulty over a kNN graph, then greedy selection
with reverse message passing that down-weights the neighbours of every pick (difficulty + diversity).

What this module implements (squared Euclidean distances d_ij^2 between the embeddings, L2-normalised first
unless `normalize=False`, so gamma has the same meaning for any encoder scale):

1. Graph: each sample's k nearest neighbours, found exactly by chunked matrix products (a (chunk x N) block at a
   time, never N x N) up to `exact_max` samples, and above that approximately with an inverted file (k-means
   cells; each cell searches its `n_probe` nearest cells; exact search at N = 140K costs ~10 min on one
   core, the IVF graph seconds), then symmetrised (edge i-j if j is in kNN(i) or i in kNN(j)), as in the graph-density
   sampler D2 builds on, so "neighbour" is a symmetric relation.
2. Forward message passing (one round): s'_i = s_i + sum_{j in N(i)} exp(-gamma_f * d_ij^2) * s_j, an RBF-
   weighted sum that raises samples lying in dense regions of difficult samples.
3. Greedy selection with reverse message passing: take i = argmax s'; for each neighbour j of i,
   s'_j <- s'_j - exp(-gamma_r * d_ij^2) * s'_i (s'_i the picked node's current score); repeat. Neighbours of a
   pick become less attractive, which spreads the picks over the embedding space.
Optional CCS-style hard pruning removes the hardest `beta` fraction before the graph is built.

The whole procedure is linear in the scores, so it is invariant to their scale; scores should be non-negative
difficulties (gradient norm or EL2N). Ties in the argmax go to the lowest index; the seed only seeds the IVF k-means.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from baselines.ccs import SCORES, check_fraction, check_positive_int, hard_prune
from goracs.selection.base import Selection, SelectionError, Selector, Signals

KNN_METHODS = ("auto", "exact", "ivf")


def _block_topk(q: torch.Tensor, q_sq: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k smallest squared distances from the rows of q to the rows of c: (sq. distances, column ids)."""
    # rank by |c|^2 - 2 q.c (|q|^2 is constant per row), computed in place: the (rows x cols) block is the
    # dominant memory traffic, so no extra temporaries of that size
    m = q @ c.T
    m.mul_(-2.0).add_(c_sq[None, :])
    val, ind = torch.topk(m, k, dim=1, largest=False, sorted=True)
    return (val + q_sq[:, None]).clamp_(min=0.0), ind


def knn_exact(x: np.ndarray, k: int, chunk: int = 1024, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self excluded) by squared L2 distance, in row chunks: (indices, sq. dists)."""
    n = len(x)
    if k >= n:
        raise SelectionError(f"k={k} neighbours need more than {n} samples")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    sq = (xt * xt).sum(1)
    nbr = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    with torch.no_grad():
        for s in tqdm(range(0, n, chunk), desc="kNN exact", disable=not progress):
            e = min(s + chunk, n)
            # k + 1 candidates: the query itself is among them (distance 0) unless duplicates tie with it
            val, ind = _block_topk(xt[s:e], sq[s:e], xt, sq, k + 1)
            _drop_self(val, ind, torch.arange(s, e), k, nbr[s:e], dist[s:e])
    return nbr, dist


def _drop_self(val: torch.Tensor, ind: torch.Tensor, qid: torch.Tensor, k: int, nbr_out: np.ndarray,
               dist_out: np.ndarray) -> None:
    """Write the k best neighbours per row, skipping the query's own id among k + 1 candidates."""
    is_self = ind == qid[:, None]
    # rows without self in their k + 1 (exact ties with duplicates) drop their last candidate instead
    no_self = ~is_self.any(1)
    is_self[no_self, -1] = True
    keep = ~is_self
    nbr_out[:] = ind[keep].view(-1, k).numpy()
    dist_out[:] = val[keep].view(-1, k).numpy()


def knn_ivf(x: np.ndarray, k: int, n_lists: int, n_probe: int, seed: int = 0, kmeans_iters: int = 10,
            chunk: int = 1024, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN with an inverted file: k-means into n_lists cells, then each cell's members search the
    members of the n_probe cells whose centroids are nearest to their own cell's centroid."""
    n = len(x)
    if k >= n:
        raise SelectionError(f"k={k} neighbours need more than {n} samples")
    g = torch.Generator().manual_seed(int(seed))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    sq = (xt * xt).sum(1)
    n_lists = max(1, min(n_lists, n // max(4 * k, 1)))
    n_probe = min(n_probe, n_lists)
    with torch.no_grad():
        # Lloyd's k-means on a subsample (enough for centroids), then assign every point
        sub = xt[torch.randperm(n, generator=g)[: min(n, 64 * n_lists)]]
        cent = sub[torch.randperm(len(sub), generator=g)[:n_lists]].clone()
        for _ in range(kmeans_iters):
            _, a = _block_topk(sub, (sub * sub).sum(1), cent, (cent * cent).sum(1), 1)
            a = a[:, 0]
            cnt = torch.bincount(a, minlength=n_lists).float()
            tot = torch.zeros_like(cent).index_add_(0, a, sub)
            cent = torch.where(cnt[:, None] > 0, tot / cnt.clamp(min=1)[:, None], cent)
        csq = (cent * cent).sum(1)
        assign = torch.empty(n, dtype=torch.int64)
        for s in range(0, n, 8 * chunk):
            assign[s:s + 8 * chunk] = _block_topk(xt[s:s + 8 * chunk], sq[s:s + 8 * chunk], cent, csq, 1)[1][:, 0]
        order = torch.argsort(assign, stable=True)
        bounds = torch.searchsorted(assign[order], torch.arange(n_lists + 1))
        _, near = _block_topk(cent, csq, cent, csq, n_probe)  # each cell's n_probe nearest cells (itself first)
        nbr = np.empty((n, k), dtype=np.int64)
        dist = np.empty((n, k), dtype=np.float32)
        for c in tqdm(range(n_lists), desc="kNN ivf", disable=not progress):
            q = order[bounds[c]:bounds[c + 1]]
            if len(q) == 0:
                continue
            cells = near[c].tolist()
            cand = torch.cat([order[bounds[j]:bounds[j + 1]] for j in cells])
            extra = n_probe
            while len(cand) < k + 1 and extra < n_lists:  # tiny cells: widen the probe until k + 1 candidates
                extra = min(2 * extra, n_lists)
                cells = _block_topk(cent[c:c + 1], csq[c:c + 1], cent, csq, extra)[1][0].tolist()
                cand = torch.cat([order[bounds[j]:bounds[j + 1]] for j in cells])
            for s in range(0, len(q), chunk):
                qq = q[s:s + chunk]
                val, ind = _block_topk(xt[qq], sq[qq], xt[cand], sq[cand], k + 1)
                rows = qq.numpy()
                tmp_n = np.empty((len(qq), k), dtype=np.int64)
                tmp_d = np.empty((len(qq), k), dtype=np.float32)
                _drop_self(val, cand[ind], qq, k, tmp_n, tmp_d)
                nbr[rows], dist[rows] = tmp_n, tmp_d
    return nbr, dist


def symmetric_graph(nbr: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, indices, squared distance) of the symmetrised kNN graph, each undirected edge stored in
    both rows once."""
    n, k = nbr.shape
    rows = np.concatenate([np.repeat(np.arange(n), k), nbr.reshape(-1)])
    cols = np.concatenate([nbr.reshape(-1), np.repeat(np.arange(n), k)])
    d = np.concatenate([dist.reshape(-1), dist.reshape(-1)]).astype(np.float64)
    key, first = np.unique(rows * n + cols, return_index=True)  # mutual neighbours appear twice: keep one
    r, c = key // n, key % n
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    return indptr, c, d[first]


def forward_pass(scores: np.ndarray, indptr: np.ndarray, indices: np.ndarray, d2: np.ndarray,
                 gamma_f: float) -> np.ndarray:
    """One round of forward message passing: s_i + sum_j exp(-gamma_f d_ij^2) s_j over the graph neighbours."""
    rows = np.repeat(np.arange(len(scores)), np.diff(indptr))
    msg = np.exp(-gamma_f * d2) * scores[indices]
    return scores + np.bincount(rows, weights=msg, minlength=len(scores))


def greedy_reverse(scores: np.ndarray, indptr: np.ndarray, indices: np.ndarray, d2: np.ndarray,
                   gamma_r: float, budget: int, progress: bool = False) -> np.ndarray:
    """Greedy picks by the current score; after each pick i, every neighbour j loses exp(-gamma_r d_ij^2) s_i."""
    cur = np.array(scores, dtype=np.float64)
    w = np.exp(-gamma_r * d2)
    picks = np.empty(budget, dtype=np.int64)
    for t in tqdm(range(budget), desc="D2 greedy", disable=not progress):
        i = int(np.argmax(cur))  # O(N) per pick is ~0.1 ms at N = 140K: simpler than a lazy heap, same result
        picks[t] = i
        a, b = indptr[i], indptr[i + 1]
        cur[indices[a:b]] -= w[a:b] * cur[i]  # already-picked neighbours stay at -inf
        cur[i] = -np.inf
    return picks


class D2PruningSelector(Selector):
    """D2-Pruning over a kNN graph of the train embeddings with a difficulty score ("grad_norms" or "el2n")."""

    name = "d2pruning"

    def __init__(self, score: str = "grad_norms", k: int = 10, gamma_f: float = 1.0, gamma_r: float = 1.0,
                 beta: float = 0.0, normalize: bool = True, knn: str = "auto", exact_max: int = 20000,
                 n_lists: int = 0, n_probe: int = 8, chunk: int = 1024, progress: bool = False):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        for name, g in (("gamma_f", gamma_f), ("gamma_r", gamma_r)):
            if not np.isfinite(float(g)) or float(g) < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {g!r}")
        self.score, self.k = score, check_positive_int("k", k)
        self.gamma_f, self.gamma_r = float(gamma_f), float(gamma_r)
        self.beta = check_fraction("beta", beta)
        self.normalize, self.chunk, self.progress = bool(normalize), check_positive_int("chunk", chunk), progress
        if knn not in KNN_METHODS:
            raise ValueError(f"knn must be one of {KNN_METHODS}, got {knn!r}")
        if isinstance(n_lists, bool) or int(n_lists) != n_lists or int(n_lists) < 0:
            raise ValueError(f"n_lists must be a non-negative integer (0: 2 * sqrt(N)), got {n_lists!r}")
        self.knn, self.exact_max = knn, check_positive_int("exact_max", exact_max)
        self.n_lists, self.n_probe = int(n_lists), check_positive_int("n_probe", n_probe)
        self.needs = ("embeddings", score)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        s = np.asarray(getattr(signals, self.score), dtype=np.float64).reshape(-1)
        if (s < 0).any():
            raise SelectionError(f"D2-Pruning expects non-negative difficulty scores; '{self.score}' has "
                                 f"{int((s < 0).sum())} negative values")
        keep = hard_prune(s, self.beta)
        if len(keep) < budget:
            raise SelectionError(f"after pruning the hardest beta={self.beta} fraction only {len(keep)} samples "
                                 f"remain, fewer than the budget {budget}: lower beta")
        x = np.asarray(signals.embeddings, dtype=np.float32).reshape(signals.n_train, -1)[keep]
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        method = self.knn if self.knn != "auto" else ("exact" if len(x) <= self.exact_max else "ivf")
        if method == "exact":
            nbr, dist = knn_exact(x, self.k, self.chunk, self.progress)
        else:
            n_lists = self.n_lists or int(round(2 * np.sqrt(len(x))))
            nbr, dist = knn_ivf(x, self.k, n_lists, self.n_probe, seed, chunk=self.chunk, progress=self.progress)
        t_graph = time.perf_counter() - t0
        indptr, indices, d2 = symmetric_graph(nbr, dist)
        s_fwd = forward_pass(s[keep], indptr, indices, d2, self.gamma_f)
        picks = greedy_reverse(s_fwd, indptr, indices, d2, self.gamma_r, budget, self.progress)
        return Selection(keep[picks], {"n_pruned": int(len(s) - len(keep)), "n_edges": int(len(indices) // 2),
                                       "knn": method, "knn_time_s": t_graph, "pick_order": keep[picks].tolist(),
                                       "time_s": time.perf_counter() - t0})
