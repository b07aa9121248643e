"""The lazy outer bound of ITRA stage 2: the exact top-k of the tight outer MI estimate each round without
re-scoring every row (_LazyOuter), with the row-independent (_shift_slack) and per-row (_row_slack) bounds on
how far a score can drop when the duals change (docs/selection.md).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from goracs.selection.mi import _tight_scores_y
from goracs.selection.ot import ceil_div


@nb.njit(cache=True)
def _row_slack(C, rows, ys, epoch, fs, f, J, cs, base, n, room):
    """Per-row drop bound of the tight score since each row's epoch, exact on the columns where f rose most.

    For row o scored at f_e with maximiser y_o, and any shift c, with a_j = C_oj - f_e,j - y_o and
    b_j = f_j - f_e,j + c:  F_o(f) >= G(y_o + c; f) = F_o(f_e) + c/n - mean_j [min(a_j, 0) - min(a_j - b_j, 0)].
    Each bracket is at most max(b_j, 0) (the row-independent _shift_slack bound); on the L columns J[e] where f
    rose most it is evaluated exactly, and it is 0 wherever a_j >= b_j, i.e. for the rows far from those
    columns. base[e, c] holds the sum of max(b_j, 0) over the other columns. Returns the slack per row, i.e.
    mean_j [...] - c/n plus a margin for float rounding, and the shift c used: the smallest over the candidate
    shifts, or the first (in the order of cs) whose slack is below room[t] (the row then clears the caller's
    threshold and a smaller slack would not change that).
    """
    M = f.shape[0]
    L = J.shape[1]
    ne = J.shape[0]
    # per epoch, the J columns' f_e and rise f - f_e, so the row loop reads them in order
    fsJ = np.empty((ne, L))
    dJ = np.empty((ne, L))
    for e in range(ne):
        for q in range(L):
            j = J[e, q]
            fsJ[e, q] = fs[e, j]
            dJ[e, q] = f[j] - fs[e, j]
    out = np.empty(rows.shape[0])
    cbest = np.empty(rows.shape[0])
    a = np.empty(L)
    for t in range(rows.shape[0]):
        o = rows[t]
        e = epoch[o]
        y = ys[o]
        for q in range(L):
            a[q] = float(C[o, J[e, q]]) - fsJ[e, q] - y
        best = np.inf
        bc = 0.0
        for ci in range(cs.shape[1]):
            c = cs[e, ci]
            s = base[e, ci]
            for q in range(L):
                b = dJ[e, q] + c
                s += min(a[q], 0.0) - min(a[q] - b, 0.0)
            v = s / M - c / n + 1e-12
            if v < best:
                best = v
                bc = c
                if v < room[t]:
                    break
        out[t] = best
        cbest[t] = bc
    return out, cbest


def _shift_slack(delta: np.ndarray, n: int):
    """min over c of mean_j max(delta_j + c, 0) - c/n (per row of a 2-d delta): how far any F_o can drop."""
    # F(f + c) = F(f) - c/n (y shifts with f), so F(f') >= F(f) - mean_j max(f'_j + c - f_j, 0) + c/n for
    # every c; the best c removes the common drift of the duals and leaves the local change. The function is
    # convex and piecewise linear with kinks at c = -delta_j; its minimum sits where about M/n terms are positive.
    one = delta.ndim == 1
    delta = np.atleast_2d(delta)
    M = delta.shape[1]
    R = ceil_div(M, n)
    ks = sorted({max(1, min(M, k)) for k in (R - 1, R, R + 1)})
    top = -np.sort(-np.partition(delta, M - ks[-1], axis=1)[:, M - ks[-1]:], axis=1)  # largest, descending
    best = np.maximum(delta, 0.0).mean(axis=1)  # c = 0: the plain bound
    for k in ks:
        c = -top[:, k - 1]
        best = np.minimum(best, np.maximum(delta + c[:, None], 0.0).mean(axis=1) - c / n)
    best = best + 1e-12  # margin for float rounding in the scores
    return float(best[0]) if one else best


class _LazyOuter:
    """Exact top-k of the tight outer estimate without re-scoring every row each round.

    F_o is a max over y of G(y; f) = y/n + mean_j min(C_oj - y - f_j, 0), and F drops by at most
    _shift_slack(f - f_old) when f_old becomes f; so a score taken at f_old minus that amount is a lower bound,
    and rows are re-scored in increasing bound order until the bound exceeds the k-th best exact score. Each
    row remembers the round (epoch) of its last score, so a row re-scored recently gets the small slack of the
    recent change, not the slack accumulated since the last full score. A row whose row-independent bound does
    not clear the k-th best score gets a second, per-row bound (_row_slack: exact on the columns where f rose
    most, which usually matter only to the few rows near them) before it is re-scored. The top k and their
    order (value, then row index) are the same as with a full re-score.
    """

    MAX_EPOCHS = 128
    L = 128  # columns per epoch on which the per-row bound is exact

    def __init__(self, C, R, n):
        self.C, self.R, self.n = C, R, n
        self.scores = None
        self.full = 0
        self.partial_rows = 0
        self.refined_rows = 0

    def _full(self, f, in_s, k):
        N = self.C.shape[0]
        cand = np.flatnonzero(~in_s).astype(np.int64)
        self.scores = np.full(N, np.inf)
        self.ys = np.zeros(N)  # each row's maximiser y at its epoch, for the per-row bound
        self.scores[cand], self.ys[cand] = _tight_scores_y(self.C, f, self.R, self.n, cand)
        self.epoch = np.zeros(N, np.int32)
        self.fs = np.empty((self.MAX_EPOCHS, len(f)))
        self.fs[0] = f
        self.nf = 1
        self.full += 1
        top = np.argsort(self.scores, kind="stable")[:k]
        self.top_scores = self.scores[top]
        return top

    def _row_bound_setup(self, f, epochs=None):
        """Per epoch: the L columns where f rose most, candidate shifts c, and the sum of max(b_j, 0) over
        the other columns (see _row_slack). With `epochs`, only those rows of the tables are filled."""
        if epochs is not None:
            J0, cs0, base0 = self._row_bound_setup_rows(f, epochs)
            J = np.zeros((self.nf, J0.shape[1]), np.int64)
            cs = np.zeros((self.nf, cs0.shape[1]))
            base = np.zeros((self.nf, cs0.shape[1]))
            J[epochs], cs[epochs], base[epochs] = J0, cs0, base0
            return J, cs, base
        return self._row_bound_setup_rows(f, np.arange(self.nf))

    def _row_bound_setup_rows(self, f, epochs):
        # The duals move in blocks: an exchange whose searches settle most of the graph lowers f by about the
        # same amount on most columns but not on a cluster the searches never reached, so f rises by ~0.4
        # relative to the rest on ~100 columns. No common shift fits both; the per-row bound takes those
        # columns exactly, and the shifts c = -(k-th largest rise) with k up to L + 1 (the other columns then
        # have b_j <= 0: base = 0) let it use the common drift of the rest.
        D = f[None, :] - self.fs[epochs]
        M = D.shape[1]
        L = min(self.L, M)
        J = np.sort(np.argpartition(-D, L - 1, axis=1)[:, :L], axis=1).astype(np.int64)  # sorted: gathers in order
        K = min(M, L + 1)
        top = -np.sort(-np.partition(D, M - K, axis=1)[:, M - K:], axis=1)  # the K largest rises, descending
        R = self.R
        # (at 15k, over 100 rounds, k = L wins for 85 % of the rows, L + 1, 3L/4 and c = 0 for almost all the rest)
        ks = list(dict.fromkeys(max(1, min(K, k)) for k in (L, L + 1, 3 * L // 4, R)))  # likeliest first
        cs = np.concatenate([-top[:, [k - 1 for k in ks]], np.zeros((len(epochs), 1))], axis=1)
        Dm = D.copy()
        np.put_along_axis(Dm, J, -np.inf, axis=1)
        base = np.stack([np.maximum(Dm + cs[:, [i]], 0.0).sum(axis=1) for i in range(cs.shape[1])], axis=1)
        return J, np.ascontiguousarray(cs), np.ascontiguousarray(base)

    @staticmethod
    def _order(lb, N):
        m = min(N, 4096)
        order = np.argpartition(lb, m - 1)[:m] if m < N else np.arange(N)
        return order[np.lexsort((order, lb[order]))]  # the m smallest bounds, in order

    def top(self, f, in_s, k):
        C = self.C
        N = C.shape[0]
        if self.scores is None or self.nf >= self.MAX_EPOCHS:
            return self._full(f, in_s, k)
        used = np.flatnonzero(np.bincount(self.epoch, minlength=self.nf))  # epochs some row still carries
        slack = np.zeros(self.nf)
        slack[used] = _shift_slack(f[None, :] - self.fs[used], self.n)
        lb = self.scores - slack[self.epoch]
        lb[in_s] = np.inf
        # rows that were in S when last scored have no score: always re-score them
        lb[np.isinf(self.scores) & ~in_s] = -np.inf
        order = self._order(lb, N)
        cand_rows, cand_sc, cand_y = [], [], []
        tau = np.inf
        pos = 0
        step = max(64, 2 * k)
        refined = False
        while True:
            if pos >= len(order):
                if len(order) == N:
                    break
                order = np.lexsort((np.arange(N), lb))  # bounds loose beyond the first m: sort them all
                order = order[pos:]
                pos = 0
                if not len(order):
                    break
            b = lb[order[pos]]
            if b > tau or b == np.inf:  # no remaining row can enter the top k (or all are in S)
                break
            if tau < np.inf and not refined:
                # Once a k-th best exact score exists: one pass of the per-row bound over every row whose
                # row-independent bound does not clear it. A row keeps the better bound as its new score, at
                # this round's epoch (it is G(y_o + c; f) for this f, minus the margin: a valid lower bound of F_o
                # of the kind the bounds need), so it is not refined again next round.
                refined = True
                need = np.flatnonzero(lb <= tau)
                need = need[np.isfinite(self.scores[need])]
                if len(need):
                    setup = self._row_bound_setup(f, np.unique(self.epoch[need]))  # epochs in use only
                    sc_need = self.scores[need]
                    sl, cb = _row_slack(C, need.astype(np.int64), self.ys, self.epoch, self.fs, f, *setup, self.n,
                                        sc_need - tau)
                    nlb = sc_need - sl
                    better = nlb > lb[need]
                    idx = need[better]
                    lb[idx] = nlb[better]
                    self.scores[idx] = nlb[better]
                    self.ys[idx] += cb[better]
                    self.epoch[idx] = self.nf
                    self.refined_rows += len(need)
                if cand_rows:  # rows scored already this round are candidates: keep them out of the order
                    lb_done = np.concatenate(cand_rows)
                    saved = lb[lb_done].copy()
                    lb[lb_done] = np.inf
                    order = self._order(lb, N)
                    lb[lb_done] = saved
                    order = order[~np.isin(order, lb_done)]  # (only needed if fewer than m rows remain)
                else:
                    order = self._order(lb, N)
                pos = 0
                continue
            blk = order[pos:pos + step]
            blk = blk[(lb[blk] <= tau) & ~in_s[blk]]  # rows of S (bound +inf) are never candidates
            ex, ey = _tight_scores_y(C, f, self.R, self.n, blk.astype(np.int64))
            cand_rows.append(blk)
            cand_sc.append(ex)
            cand_y.append(ey)
            pos += step
            allsc = np.concatenate(cand_sc)
            if len(allsc) >= k:
                tau = np.partition(allsc, k - 1)[k - 1]
        rows = np.concatenate(cand_rows)
        ex = np.concatenate(cand_sc)
        self.partial_rows += len(rows)
        # keep the fresh scores with this round's f
        self.scores[rows] = ex
        self.ys[rows] = np.concatenate(cand_y)
        self.epoch[rows] = self.nf
        self.fs[self.nf] = f
        self.nf += 1
        # with per-row epochs the bounds of rows scored recently stay tight, so a full re-score pays only when
        # most rows had to be re-scored anyway
        if len(rows) > N // 2:
            self.scores = None
        sel = np.lexsort((rows, ex))[:k]
        self.top_scores = ex[sel]  # the exact scores of the rows returned, in their order
        return rows[sel]
