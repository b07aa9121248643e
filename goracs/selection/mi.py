"""The MI estimate of ITRA stage 2 (method.md 3.3): outer scores (rows outside S), inner scores (slots of S, leave
one out), the weak-duality pair bounds that screen an exchange, and mi_scores.

F(y) = y/n + mean_j min(C_oj - f_j - y, 0), f the c-transform of the duals over S, at y = the R-th smallest of
C_o - f (tight) or the R-th largest (the authors' estimate, mode "reference"); R = ceil(M / n).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from goracs.selection.base import SelectionError
from goracs.selection.ot import ceil_div, ctransform

MI_MODES = ("tight", "reference")


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
