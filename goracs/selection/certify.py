"""Numba kernels of the sparse search graph of goracs.selection.exchange.ExchangeSolver: the per-source lists of
cheap arcs the searches use (_sparse_lists), and the certificate that a plan found on them is optimal on all
n*M arcs (_certify_ctransform, which also leaves the c-transform of the duals for the next round).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, fastmath=True)
def _row_min_minus(C, r, v):
    """min_j (C[r, j] - v[j]); a plain min reduction, which fastmath lets the compiler vectorise."""
    m = 1e300  # finite start: fastmath assumes no infinities
    for j in range(v.shape[0]):
        m = min(m, float(C[r, j]) - v[j])
    return m


@nb.njit(cache=True)
def _min_reduced_cost(C, rows, u, v, tol, sp, splen, spc):
    """Certificate: smallest reduced cost over all n*M arcs. Each source's most violated arc (< -tol) is
    appended to its sparse list (when there is room) so that a retry can use it."""
    n = rows.shape[0]
    M = v.shape[0]
    best = np.inf
    for k in range(n):
        r = rows[k]
        uk = u[k]
        bk = _row_min_minus(C, r, v) - uk
        bj = -1
        if bk < -tol:  # rare: find the arc, in the same arithmetic as the searches
            bk = np.inf
            for j in range(M):
                rc = float(C[r, j]) - uk - v[j]
                if rc < bk:
                    bk = rc
                    bj = j
        if bk < best:
            best = bk
        if bk < -tol and splen[k] < sp.shape[1]:
            sp[k, splen[k]] = bj
            spc[k, splen[k]] = float(C[r, bj])
            splen[k] += 1
    return best


@nb.njit(cache=True, inline="always")
def _ct_update(x, a, b, g, k):
    # one row's entry x into a column's (min a, second min b, first argmin g): branch-free selects;
    # b = min(b, max(a, x)) is the second minimum with multiplicity (equal to a on a tie)
    lo = x < a
    hi = a if lo else x
    return (x if lo else a), (hi if hi < b else b), (k if lo else g)


@nb.njit(cache=True)
def _ctransform_sweep(C, rows, u, f1, f2, arg):
    """ctransform's (f1, f2, arg) of C[rows] - u into the given arrays (same values; see _certify_ctransform).

    Four selected rows per pass over the columns: the column state (f1, f2, arg: 120 KB at M = 5,000) lives in
    L2, and loading and storing it once per row made the sweep bound by L2 traffic; per four rows it is ~5x
    faster. The rows still enter each column in slot order, so every value (and the first argmin) is the same.
    """
    n = rows.shape[0]
    M = f1.shape[0]
    for j in range(M):
        f1[j] = np.inf
        f2[j] = np.inf
        arg[j] = -1
    k = 0
    while k + 4 <= n:
        r0, r1, r2, r3 = rows[k], rows[k + 1], rows[k + 2], rows[k + 3]
        u0, u1, u2, u3 = u[k], u[k + 1], u[k + 2], u[k + 3]
        for j in range(M):
            a, b, g = f1[j], f2[j], arg[j]
            a, b, g = _ct_update(float(C[r0, j]) - u0, a, b, g, k)
            a, b, g = _ct_update(float(C[r1, j]) - u1, a, b, g, k + 1)
            a, b, g = _ct_update(float(C[r2, j]) - u2, a, b, g, k + 2)
            a, b, g = _ct_update(float(C[r3, j]) - u3, a, b, g, k + 3)
            f1[j], f2[j], arg[j] = a, b, g
        k += 4
    while k < n:
        r0, u0 = rows[k], u[k]
        for j in range(M):
            f1[j], f2[j], arg[j] = _ct_update(float(C[r0, j]) - u0, f1[j], f2[j], arg[j], k)
        k += 1


@nb.njit(cache=True)
def _certify_ctransform(C, rows, u, v, tol, sp, splen, spc, f1, f2, arg):
    """Certificate (smallest reduced cost over all n*M arcs, each source's most violated arc appended to its
    sparse list) and ctransform's (f1, f2, arg), from one sweep over C[rows].

    Every reduced cost C_kj - u_k - v_j (the searches' arithmetic, left to right) is >= f1_j - v_j, with
    equality at the column's minimiser (float subtraction is monotone), so the certificate is a check of
    f1 - v over the M columns. Only when it fails are the rows read again, on the violated columns alone: a
    source's most violated arc lies on one of them, and scanning them in increasing order finds the same
    (first) arc as a scan of the whole row. The c-transform is the next round's when the exchange is accepted;
    f2 is the second minimum with multiplicity (equal to f1 on a tie, as ctransform's count), arg the first
    slot attaining the minimum, so slot k is the unique minimiser iff f2 > f1.
    """
    n = rows.shape[0]
    M = v.shape[0]
    _ctransform_sweep(C, rows, u, f1, f2, arg)
    best = np.inf
    viol = np.empty(M, np.int64)
    nv = 0
    for j in range(M):
        rc = f1[j] - v[j]
        if rc < best:
            best = rc
        if rc < -tol:
            viol[nv] = j
            nv += 1
    if nv == 0:
        return best
    for k in range(n):
        r = rows[k]
        uk = u[k]
        bk = np.inf
        bj = -1
        for t in range(nv):
            j = viol[t]
            rc = float(C[r, j]) - uk - v[j]
            if rc < bk:
                bk = rc
                bj = j
        if bk < -tol and splen[k] < sp.shape[1]:
            sp[k, splen[k]] = bj
            spc[k, splen[k]] = float(C[r, bj])
            splen[k] += 1
    return best


@nb.njit(cache=True)
def _heap_down(h, p, K):
    while True:
        c = 2 * p + 1
        if c >= K:
            return
        if c + 1 < K and h[c + 1] > h[c]:
            c += 1
        if h[c] > h[p]:
            h[c], h[p] = h[p], h[c]
            p = c
        else:
            return


@nb.njit(cache=True)
def _kth_smallest(d, K, h):
    """The K-th smallest entry of d (with multiplicity; = np.partition(d, K - 1)[K - 1]), via a max-heap of the K
    smallest so far in h: after the first few hundred entries almost every entry is one compare (np.partition
    was ~90 % of the list build)."""
    for i in range(K):
        h[i] = d[i]
    for i in range(K // 2 - 1, -1, -1):
        _heap_down(h, i, K)
    for j in range(K, d.shape[0]):
        if d[j] < h[0]:
            h[0] = d[j]
            _heap_down(h, 0, K)
    return h[0]


@nb.njit(cache=True)
def _sparse_lists(C, rows, v, X, K, extra):
    """Per source: its K smallest-reduced-cost sinks plus its flow arcs, with `extra` free slots (and costs)."""
    n = rows.shape[0]
    M = v.shape[0]
    # Each source's flow arcs in increasing sink order, gathered row by row of X (a column scan of X per source
    # reads it with a stride of n entries).
    deg = np.zeros(n, np.int64)
    for j in range(M):
        for k in range(n):
            if X[j, k] > 0:
                deg[k] += 1
    fstart = np.zeros(n + 1, np.int64)
    for k in range(n):
        fstart[k + 1] = fstart[k] + deg[k]
    flows = np.empty(fstart[n], np.int64)
    fill = fstart[:n].copy()
    for j in range(M):
        for k in range(n):
            if X[j, k] > 0:
                flows[fill[k]] = j
                fill[k] += 1
    W = K + deg.max() + extra
    sp = np.full((n, W), -1, np.int64)
    spc = np.zeros((n, W))
    splen = np.zeros(n, np.int64)
    mark = np.zeros(M, np.bool_)
    d = np.empty(M)
    h = np.empty(max(K, 1))
    for k in range(n):
        r = rows[k]
        for j in range(M):
            d[j] = float(C[r, j]) - v[j]
        thr = _kth_smallest(d, K, h) if K < M else np.inf
        m = 0
        for j in range(M):
            if d[j] <= thr and m < K:
                sp[k, m] = j
                mark[j] = True
                m += 1
        for t in range(fstart[k], fstart[k + 1]):
            j = flows[t]
            if not mark[j]:
                sp[k, m] = j
                m += 1
        for t in range(m):
            mark[sp[k, t]] = False
            spc[k, t] = float(C[r, sp[k, t]])
        splen[k] = m
    return sp, splen, spc
