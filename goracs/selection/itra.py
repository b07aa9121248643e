"""ITRA (method.md 3): lazy greedy p-median build, then exchange refinement with MI-estimate pruning.

Stage 1 is a facility-location greedy. Gains are float64 sums, in a fixed sequential order, of
max(cur_j - C_oj, 0); every term only shrinks as the selection grows and float addition is monotone, so a
stale gain is a valid upper bound even in floating point, and the lazy greedy (a max-heap of stale gains,
re-scoring only the top) picks exactly what the plain greedy picks. Ties: both take the largest gain and,
among equal gains, the smallest row index (the plain greedy's first argmax).

Stage 2 tries exchanges (i out, o in) in the order given by the MI estimate (method.md 3.3), screens each pair
with a weak-duality lower bound on its POO, and re-solves the survivors exactly by successive shortest paths
(goracs.selection.ot.ExchangeSolver) instead of a cold network simplex.

mi_estimate="reference" runs both stages in goracs.selection.reference instead: the authors' decisions exactly
(float32 greedy gains, cold-solve duals, their float32 estimate and ordering), see that module.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numba as nb
import numpy as np

from goracs.selection.base import Selection, SelectionError, Selector, Signals, register
from goracs.selection.ot import ExchangeSolver, ceil_div, ctransform, poo
from goracs.selection.reference import greedy_reference, refine_reference

MI_MODES = ("tight", "reference")
ACCEPT_TOL = 1e-12  # an exchange must lower the POO by more than this (guards against float ties cycling)

# ----------------------------------------------------------------------------------------------------------
# Stage 1: greedy


@nb.njit(cache=True)
def _scan(C):
    """Row sums (float64) and, per column, the first row attaining the column minimum."""
    N, M = C.shape
    rs = np.zeros(N)
    cmin = np.full(M, np.inf, np.float32)
    carg = np.zeros(M, np.int64)
    for i in range(N):
        s = 0.0
        for j in range(M):
            c = C[i, j]
            s += c
            if c < cmin[j]:
                cmin[j] = c
                carg[j] = i
        rs[i] = s
    return rs, carg


@nb.njit(cache=True, inline="always")
def _gain(C, o, cur):
    s = 0.0
    for j in range(cur.shape[0]):
        d = float(cur[j]) - float(C[o, j])
        if d > 0.0:
            s += d
    return s


@nb.njit(cache=True)
def _gains_all(C, cur, selected, out):
    for o in range(C.shape[0]):
        out[o] = -1.0 if selected[o] else _gain(C, o, cur)


@nb.njit(cache=True, inline="always")
def _hbetter(g1, i1, g2, i2):
    return g1 > g2 or (g1 == g2 and i1 < i2)


@nb.njit(cache=True)
def _hsift_down(hg, hi, size, i):
    while True:
        l = 2 * i + 1
        if l >= size:
            break
        c = l
        if l + 1 < size and _hbetter(hg[l + 1], hi[l + 1], hg[l], hi[l]):
            c = l + 1
        if _hbetter(hg[c], hi[c], hg[i], hi[i]):
            hg[i], hg[c] = hg[c], hg[i]
            hi[i], hi[c] = hi[c], hi[i]
            i = c
        else:
            break


@nb.njit(cache=True)
def _add(C, o, cur, assign, counts, picks, npick, selected):
    """Add row o: update column minima, the serving sample of each column and the serving counts."""
    selected[o] = True
    picks[npick] = o
    newly = 0
    lost = 0
    for j in range(cur.shape[0]):
        c = C[o, j]
        if c < cur[j]:  # strict: ties stay with the earlier pick, as argmin over S in pick order does
            a = assign[j]
            if a >= 0:
                counts[a] -= 1
                if counts[a] == 0:
                    lost += 1
            if counts[o] == 0:
                newly += 1
            counts[o] += 1
            assign[j] = o
            cur[j] = c
    return newly - lost


@nb.njit(cache=True)
def _greedy_run(C, n, flag, lazy, cur, assign, counts, picks, npick, nserve, selected, hg, hi, hsize, gains,
                max_steps):
    """Advance the greedy by at most max_steps picks. Returns (npick, nserve, hsize, status, evals).

    status: 0 = stopped by the rule, 1 = step budget used, 2 = stalled (no positive gain left past n),
    3 = pool exhausted.
    """
    N = C.shape[0]
    evals = 0
    for _ in range(max_steps):
        if npick >= n and (nserve >= n or not flag):
            return npick, nserve, hsize, 0, evals
        if npick >= N:
            return npick, nserve, hsize, 3, evals
        if lazy:
            while True:
                t = hi[0]
                g = _gain(C, t, cur)
                evals += 1
                hg[0] = g
                if hsize == 1:
                    break
                # best child = the next-best stale bound
                c = 1
                if hsize > 2 and _hbetter(hg[2], hi[2], hg[1], hi[1]):
                    c = 2
                if _hbetter(g, t, hg[c], hi[c]):
                    break
                _hsift_down(hg, hi, hsize, 0)
            best = hi[0]
            bg = hg[0]
            hsize -= 1
            hg[0] = hg[hsize]
            hi[0] = hi[hsize]
            _hsift_down(hg, hi, hsize, 0)
        else:
            _gains_all(C, cur, selected, gains)
            evals += N - npick
            best = -1
            bg = -2.0
            for o in range(N):
                if not selected[o] and gains[o] > bg:
                    bg = gains[o]
                    best = o
        if npick >= n and bg <= 0.0:
            return npick, nserve, hsize, 2, evals
        nserve += _add(C, best, cur, assign, counts, picks, npick, selected)
        npick += 1
    return npick, nserve, hsize, 1, evals


def greedy_init(C: np.ndarray, n: int, *, lazy: bool = True, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Stage 1 (method.md 3.1): greedy p-median build with the reference stopping rule; returns rows and info."""
    N, M = C.shape
    if not 0 < n <= N:
        raise SelectionError(f"greedy budget must be in [1, {N}], got {n}")
    t0 = time.perf_counter()
    rowsum, carg = _scan(C)
    # If the whole pool has at most n distinct nearest neighbours of validation points, the rule stops at n.
    flag = len(np.unique(carg)) > n
    first = int(np.argmin(rowsum))
    cur = np.full(M, np.inf, np.float32)
    assign = np.full(M, -1, np.int64)
    counts = np.zeros(N, np.int64)
    picks = np.empty(N, np.int64)
    selected = np.zeros(N, np.bool_)
    nserve = int(_add(C, first, cur, assign, counts, picks, 0, selected))
    npick = 1
    gains = np.empty(N)
    evals = 0
    if lazy:
        # Exact gains w.r.t. the first pick seed the heap of upper bounds.
        _gains_all(C, cur, selected, gains)
        evals += N - 1
        hi = np.flatnonzero(~selected).astype(np.int64)
        hg = gains[hi].copy()
        order = np.lexsort((hi, -hg))  # heap array sorted best-first is a valid heap
        hi, hg = hi[order].copy(), hg[order].copy()
    else:
        hi, hg = np.zeros(1, np.int64), np.zeros(1)
    hsize = len(hi)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="ITRA greedy" + (" (lazy)" if lazy else " (plain)"), unit="pick")
        bar.update(1)
    status = 1
    while status == 1:
        before = npick
        npick, nserve, hsize, status, ev = _greedy_run(C, n, flag, lazy, cur, assign, counts, picks, npick, nserve,
                                                        selected, hg, hi, hsize, gains, 32)
        evals += ev
        if bar is not None:
            bar.update(min(npick, n) - min(before, n))
    if bar is not None:
        bar.close()
    order = picks[:npick]
    serving = counts[order] > 0
    if not flag:
        rows = order[:n]
    elif int(serving.sum()) >= n:
        rows = order[serving]
    else:
        # Stalled: keep every serving pick, then the earliest non-serving picks (documented in docs/selection.md).
        rows = np.concatenate([order[serving], order[~serving][: n - int(serving.sum())]])
    rows = np.asarray(rows[:n], dtype=np.int64)
    info = {"greedy_picks": int(npick), "greedy_dropped": int(npick - len(rows)), "greedy_evals": int(evals),
            "greedy_status": ["rule", "budget", "stalled", "exhausted"][status], "greedy_flag": bool(flag),
            "greedy_relaxed_obj": float(np.sum(cur, dtype=np.float64)), "time_greedy_s": time.perf_counter() - t0}
    return rows, info


# ----------------------------------------------------------------------------------------------------------
# Stage 2: MI estimate, screening, exchanges


@nb.njit(cache=True)
def _mi_from_d(d, R, n, largest):
    """F(y) = y/n + mean_j min(d_j - y, 0) at y = the R-th smallest (tight) or R-th largest (reference) d."""
    return _mi_from_d_y(d, R, n, largest)[0]


@nb.njit(cache=True)
def _mi_from_d_y(d, R, n, largest):
    """_mi_from_d and the y it used: (F, y)."""
    M = d.shape[0]
    if largest:
        kth = M - R
    else:
        kth = R - 1
    if R <= 32:
        buf = np.full(R, np.inf)
        sgn = -1.0 if largest else 1.0  # R largest of d = R smallest of -d
        tot = 0.0
        for j in range(M):
            x = sgn * d[j]
            tot += d[j]
            if x < buf[R - 1]:
                p = R - 1
                while p > 0 and buf[p - 1] > x:
                    buf[p] = buf[p - 1]
                    p -= 1
                buf[p] = x
        y = sgn * buf[R - 1]
        s = 0.0
        if largest:
            # sum_j min(d_j - y, 0) = sum_j (d_j - y) - sum over the top R of max(d_j - y, 0)
            s = tot - M * y
            for t in range(R):
                e = -buf[t] - y
                if e > 0.0:
                    s -= e
        else:
            for t in range(R):
                e = buf[t] - y
                if e < 0.0:
                    s += e
    else:
        y = np.partition(d, kth)[kth]
        s = 0.0
        for j in range(M):
            e = d[j] - y
            if e < 0.0:
                s += e
    return y / n + s / M, y


@nb.njit(cache=True)
def _mi_tight_row(C, o, f, fl2, arg, cnt, k, R, n):
    """Tight F for row o of C against f (or, with k >= 0, against f leaving slot k out), in one pass."""
    return _mi_tight_row_y(C, o, f, fl2, arg, cnt, k, R, n)[0]


@nb.njit(cache=True)
def _mi_tight_row_y(C, o, f, fl2, arg, cnt, k, R, n):
    """_mi_tight_row and its maximiser y (the R-th smallest C_oj - f_j): (F, y)."""
    # Fused: no d array and no running total (the tight value needs only the R smallest d), so the scan is
    # one subtraction and one rarely-taken compare per column.
    M = f.shape[0]
    buf = np.full(R, np.inf)
    last = np.inf
    for j in range(M):
        fj = fl2[j] if (k >= 0 and arg[j] == k and cnt[j] == 1) else f[j]
        x = float(C[o, j]) - fj
        if x < last:
            p = R - 1
            while p > 0 and buf[p - 1] > x:
                buf[p] = buf[p - 1]
                p -= 1
            buf[p] = x
            last = buf[R - 1]
    y = buf[R - 1]
    s = 0.0
    for t in range(R):
        e = buf[t] - y
        if e < 0.0:
            s += e
    return y / n + s / M, y


@nb.njit(cache=True)
def _outer_scores(C, f, R, n, largest, skip):
    N, M = C.shape
    out = np.full(N, np.inf)
    d = np.empty(M)
    fast = not largest and R <= 32
    dummy = np.zeros(1, np.int64)
    for o in range(N):
        if skip[o]:
            continue
        if fast:
            out[o] = _mi_tight_row(C, o, f, f, dummy, dummy, -1, R, n)
            continue
        for j in range(M):
            d[j] = float(C[o, j]) - f[j]
        out[o] = _mi_from_d(d, R, n, largest)
    return out


@nb.njit(cache=True)
def _outer_scores_subset(C, f, R, n, largest, cand):
    M = C.shape[1]
    out = np.empty(cand.shape[0])
    d = np.empty(M)
    fast = not largest and R <= 32
    dummy = np.zeros(1, np.int64)
    for t in range(cand.shape[0]):
        o = cand[t]
        if fast:
            out[t] = _mi_tight_row(C, o, f, f, dummy, dummy, -1, R, n)
            continue
        for j in range(M):
            d[j] = float(C[o, j]) - f[j]
        out[t] = _mi_from_d(d, R, n, largest)
    return out


@nb.njit(cache=True)
def _tight_scores_y(C, f, R, n, cand):
    """Tight outer scores of the rows `cand` and their maximisers y (same arithmetic as _outer_scores)."""
    M = C.shape[1]
    out = np.empty(cand.shape[0])
    ys = np.empty(cand.shape[0])
    d = np.empty(M)
    dummy = np.zeros(1, np.int64)
    for t in range(cand.shape[0]):
        o = cand[t]
        if R <= 32:
            out[t], ys[t] = _mi_tight_row_y(C, o, f, f, dummy, dummy, -1, R, n)
            continue
        for j in range(M):
            d[j] = float(C[o, j]) - f[j]
        out[t], ys[t] = _mi_from_d_y(d, R, n, False)
    return out, ys


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
        return np.argsort(self.scores, kind="stable")[:k]

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
        return rows[sel]


@nb.njit(cache=True)
def _loo(f1, f2, arg, cnt, k, out):
    """c-transform over S without slot k: the second minimum where k is the unique minimiser."""
    for j in range(f1.shape[0]):
        out[j] = f2[j] if (arg[j] == k and cnt[j] == 1) else f1[j]


@nb.njit(cache=True)
def _inner_scores(C, rows, f1, f2, arg, cnt, R, largest, leave_out):
    n = rows.shape[0]
    M = C.shape[1]
    out = np.empty(n)
    fl = np.empty(M)
    d = np.empty(M)
    if leave_out and not largest and R <= 32:
        # Slot k's leave-one-out f differs from f1 only on the columns k alone attains (f2 there): patch those
        # few entries of one working copy, score with the plain row scan, restore. Same values as passing
        # (arg, cnt, k) to _mi_tight_row, without its per-column test.
        own_n = np.zeros(n + 1, np.int64)
        for j in range(M):
            if cnt[j] == 1:
                own_n[arg[j] + 1] += 1
        for k in range(n):
            own_n[k + 1] += own_n[k]
        own = np.empty(own_n[n], np.int64)
        fill = own_n[:n].copy()
        for j in range(M):
            if cnt[j] == 1:
                own[fill[arg[j]]] = j
                fill[arg[j]] += 1
        for j in range(M):
            fl[j] = f1[j]
        dummy = np.zeros(1, np.int64)
        for k in range(n):
            for t in range(own_n[k], own_n[k + 1]):
                fl[own[t]] = f2[own[t]]
            out[k] = _mi_tight_row(C, rows[k], fl, fl, dummy, dummy, -1, R, n)
            for t in range(own_n[k], own_n[k + 1]):
                fl[own[t]] = f1[own[t]]
        return out
    for k in range(n):
        if leave_out:
            _loo(f1, f2, arg, cnt, k, fl)
        else:
            for j in range(M):
                fl[j] = f1[j]
        r = rows[k]
        for j in range(M):
            d[j] = float(C[r, j]) - fl[j]
        out[k] = _mi_from_d(d, R, n, largest)
    return out


@nb.njit(cache=True)
def _pair_bounds(C, rows, u, f1, f2, arg, cnt, slot, outer, R):
    """Weak-duality lower bounds on POO(S - rows[slot] + o) for each o in outer (dual: u, c-transform, best y)."""
    n = rows.shape[0]
    M = C.shape[1]
    fl = np.empty(M)
    _loo(f1, f2, arg, cnt, slot, fl)
    base = 0.0
    for k in range(n):
        if k != slot:
            base += u[k]
    base /= n
    sf = 0.0
    for j in range(M):
        sf += fl[j]
    base += sf / M
    out = np.empty(outer.shape[0])
    dummy = np.zeros(1, np.int64)
    for t in range(outer.shape[0]):
        out[t] = base + _mi_tight_row(C, outer[t], fl, fl, dummy, dummy, -1, R, n)
    return out


def mi_scores(C: np.ndarray, rows: np.ndarray, u: np.ndarray, mode: str = "tight") -> tuple[np.ndarray, np.ndarray]:
    """MI estimates (method.md 3.3): (scores of every row of C, +inf on S; scores of each slot of S).

    mode="reference" is the authors' estimate in float64 (R-th largest, no leave-one-out); the decision-exact
    reference engine uses their float32 evaluation instead (reference.mi_scores_reference)."""
    if mode not in MI_MODES:
        raise SelectionError(f"mi_estimate must be one of {MI_MODES}, got {mode!r}")
    rows = np.asarray(rows, dtype=np.int64)
    n, M = len(rows), C.shape[1]
    R = ceil_div(M, n)
    largest = mode == "reference"
    f1, f2, arg, cnt = ctransform(C, rows, np.asarray(u, dtype=np.float64))
    skip = np.zeros(C.shape[0], np.bool_)
    skip[rows] = True
    outer = _outer_scores(C, f1, R, n, largest, skip)
    # Reference quirk 2: the leave-one-out mask never takes effect, so inner scores use f with i included.
    inner = _inner_scores(C, rows, f1, f2, arg, cnt, R, largest, not largest)
    return outer, inner


def refine(C: np.ndarray, rows: np.ndarray, *, max_iters: int = 100, cut_num: int = 30, mi_estimate: str = "tight",
           screen: bool = True, verify: bool = False, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Stage 2 (method.md 3.2-3.3): first-improvement exchanges ranked by the MI estimate; exact POO each time.

    mi_estimate="reference" hands over to reference.refine_reference (the authors' decisions; `rows` is then
    taken as their ordered list)."""
    if mi_estimate not in MI_MODES:
        raise SelectionError(f"mi_estimate must be one of {MI_MODES}, got {mi_estimate!r}")
    if mi_estimate == "reference":
        return refine_reference(C, rows, max_iters=max_iters, cut_num=cut_num, screen=screen, verify=verify,
                                progress=progress)
    t0 = time.perf_counter()
    c0 = time.process_time()  # CPU time too: on a shared machine it is the steadier measure
    N, M = C.shape
    es = ExchangeSolver(C, rows)
    n = es.n
    R = ceil_div(M, n)
    s = es.value
    traj, times = [s], [0.0]
    t_init = time.perf_counter() - t0
    c_init = time.process_time() - c0
    accepted = rounds = pass1 = tried = solved = screened = 0
    max_verify_err = 0.0
    stop = "max_iters"
    bar = None
    if progress and max_iters > 0:
        from tqdm import tqdm
        bar = tqdm(total=max_iters, desc=f"ITRA refine ({mi_estimate})", unit="exch")
    in_s = np.zeros(N, np.bool_)
    lazy = _LazyOuter(C, R, n)
    while accepted < max_iters:
        if n >= N:
            stop = "no_outside_candidates"
            break
        rounds += 1
        f1, f2, arg, cnt = es.ctransform_current()  # reuses the accepted exchange's certificate sweep
        in_s[:] = False
        in_s[es.rows] = True
        n_out = min(cut_num, N - n)
        outer = lazy.top(f1, in_s, n_out)  # most promising (lowest estimate) first
        inner_sc = _inner_scores(C, es.rows, f1, f2, arg, cnt, R, False, True)
        keep = np.argsort(inner_sc, kind="stable")[-min(cut_num, n):]  # the cut_num highest: cheapest to remove
        inner_slots = keep[::-1]  # most removable first
        done = False
        first = True
        for slot in inner_slots:
            lbs = _pair_bounds(C, es.rows, es.u, f1, f2, arg, cnt, int(slot), outer, R) if screen else None
            for t, o in enumerate(outer):
                tried += 1
                if screen and lbs[t] >= s - ACCEPT_TOL + 1e-13:
                    screened += 1  # no plan can beat the current POO by the tolerance: skip the solve
                    first = False
                    continue
                solved += 1
                new = es.try_exchange(int(slot), int(o))
                if new < s - ACCEPT_TOL:
                    es.commit()
                    new = es.value
                    if verify:
                        cold = poo(C[es.rows])[0]
                        err = abs(cold - new)
                        max_verify_err = max(max_verify_err, err)
                        if err > 1e-9:
                            raise RuntimeError(f"incremental POO {new!r} differs from a cold solve {cold!r}")
                    s = new
                    accepted += 1
                    pass1 += first
                    traj.append(s)
                    times.append(time.perf_counter() - t0)
                    done = True
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(poo=f"{s:.6f}")
                    break
                es.rollback()
                first = False
            if done:
                break
        if not done:
            stop = "no_improving_pair"
            break
    if bar is not None:
        bar.close()
    report = {"poo_trajectory": traj, "refine_times_s": times, "accepted": accepted, "rounds": rounds,
              "pass_at_1": pass1 / accepted if accepted else float("nan"), "exchanges_tried": tried,
              "exchanges_solved": solved, "exchanges_screened": screened, "refine_stop": stop,
              "time_refine_s": time.perf_counter() - t0, "time_refine_init_s": t_init,
              "cpu_refine_s": time.process_time() - c0, "cpu_refine_init_s": c_init,
              "mi_estimate": mi_estimate, "ssp_stats": es.stats.tolist(),
              "outer_full_rescores": lazy.full, "outer_partial_rows": lazy.partial_rows}
    if verify:
        report["max_verify_err"] = max_verify_err
    return np.sort(es.rows), report


def itra(C: np.ndarray, n: int, *, max_iters: int = 100, cut_num: int = 30, mi_estimate: str = "tight",
         screen: bool = True, verify: bool = False, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Both ITRA stages on a cost matrix: returns (sorted row indices, report)."""
    N = C.shape[0]
    if n >= N:
        warnings.warn(f"budget {n} >= pool size {N}: returning the whole pool", stacklevel=2)
        return np.arange(N), {"whole_pool": True}
    if mi_estimate == "reference":
        rows, info = greedy_reference(C, n, progress=progress)  # the authors' float32 gains, pick order kept
    else:
        rows, info = greedy_init(C, n, lazy=True, progress=progress)
    rows, rep = refine(C, rows, max_iters=max_iters, cut_num=cut_num, mi_estimate=mi_estimate, screen=screen,
                       verify=verify, progress=progress)
    info.update(rep)
    info["poo_greedy"] = rep["poo_trajectory"][0]
    info["poo_final"] = rep["poo_trajectory"][-1]
    return rows, info


# ----------------------------------------------------------------------------------------------------------


def _check_params(lam, max_iters, cut_num, mi_estimate, label_enhanced):
    if not np.isfinite(float(lam)):
        raise SelectionError(f"lam must be finite, got {lam}")
    if int(max_iters) < 0:
        raise SelectionError(f"max_iters must be >= 0, got {max_iters}")
    if int(cut_num) < 1:
        raise SelectionError(f"cut_num must be >= 1, got {cut_num}")
    if mi_estimate not in MI_MODES:
        raise SelectionError(f"mi_estimate must be one of {MI_MODES}, got {mi_estimate!r}")
    if label_enhanced not in ("auto", True, False):
        raise SelectionError(f"label_enhanced must be auto, true or false, got {label_enhanced!r}")


@register("goracs")
class GoracsSelector(Selector):
    """GORACS: cost from embeddings and gradient norms, ITRA (label-enhanced for classification tasks)."""

    needs = ("embeddings", "val_embeddings", "grad_norms")

    def __init__(self, lam: float = 0.1, max_iters: int = 100, cut_num: int = 30, mi_estimate: str = "tight",
                 label_enhanced: Any = "auto", device: str = "auto", screen: bool = True, verify: bool = False,
                 progress: bool = True, chunk_rows: int = 2048, label_cost: str = "authors"):
        _check_params(lam, max_iters, cut_num, mi_estimate, label_enhanced)
        from goracs.selection.label import LABEL_COSTS

        if label_cost not in LABEL_COSTS:
            raise SelectionError(f"label_cost must be one of {LABEL_COSTS}, got {label_cost!r}")
        self.label_cost = label_cost
        self.lam = float(lam)
        self.max_iters = int(max_iters)
        self.cut_num = int(cut_num)
        self.mi_estimate = mi_estimate
        self.label_enhanced = label_enhanced
        self.device = device
        self.screen = bool(screen)
        self.verify = bool(verify)
        self.progress = bool(progress)
        self.chunk_rows = int(chunk_rows)

    def _itra_kwargs(self) -> dict:
        return dict(max_iters=self.max_iters, cut_num=self.cut_num, mi_estimate=self.mi_estimate,
                    screen=self.screen, verify=self.verify, progress=self.progress)

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        from goracs.selection.cost import compute_cost, resolve_device

        dev = resolve_device(self.device)
        use_labels = signals.labels is not None if self.label_enhanced == "auto" else bool(self.label_enhanced)
        t0 = time.perf_counter()
        if use_labels:
            from goracs.selection.label import label_enhanced_itra

            if signals.labels is None or signals.val_labels is None:
                raise SelectionError("label-enhanced ITRA needs both labels and val_labels")
            idx, report = label_enhanced_itra(signals.embeddings, signals.val_embeddings, signals.grad_norms,
                                              signals.labels, signals.val_labels, budget, lam=self.lam,
                                              device=str(dev), chunk_rows=self.chunk_rows,
                                              label_cost=self.label_cost, **self._itra_kwargs())
        else:
            C = compute_cost(signals.embeddings, signals.val_embeddings, signals.grad_norms, self.lam,
                             device=str(dev), chunk_rows=self.chunk_rows, progress=self.progress)
            t_cost = time.perf_counter() - t0
            idx, report = itra(C, budget, **self._itra_kwargs())
            report["time_cost_s"] = t_cost
            del C
        report.update({"lam": self.lam, "budget": budget, "label_enhanced": use_labels, "device": str(dev),
                       "seed_used": False, "time_total_s": time.perf_counter() - t0})
        return Selection(np.asarray(idx, dtype=np.int64), report)
