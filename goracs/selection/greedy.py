"""ITRA stage 1 (method.md 3.1): lazy greedy p-median build with the reference stopping rule (greedy_init).

Stage 1 is a facility-location greedy. Gains are float64 sums, in a fixed sequential order, of
max(cur_j - C_oj, 0); every term only shrinks as the selection grows and float addition is monotone, so a
stale gain is a valid upper bound even in floating point, and the lazy greedy (a max-heap of stale gains,
re-scoring only the top) picks exactly what the plain greedy picks. Ties: both take the largest gain and,
among equal gains, the smallest row index (the plain greedy's first argmax).
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np

from goracs.selection.base import SelectionError


@nb.njit(cache=True)
def _scan_rows(B, s, rowsum, cmin, carg):
    """Rows s .. s + len(B) of the cost (B holds them): their float64 sums into rowsum, and per column the first
    row attaining the minimum so far (cmin / carg carry the state of earlier rows, so chunks scanned in order give
    the same result as one scan of the whole matrix)."""
    m, M = B.shape
    for i in range(m):
        t = 0.0
        for j in range(M):
            c = B[i, j]
            t += c
            if c < cmin[j]:
                cmin[j] = c
                carg[j] = s + i
        rowsum[s + i] = t


@nb.njit(cache=True)
def _scan(C):
    """Row sums (float64) and, per column, the first row attaining the column minimum."""
    N, M = C.shape
    rs = np.zeros(N)
    cmin = np.full(M, np.inf, np.float32)
    carg = np.zeros(M, np.int64)
    _scan_rows(C, 0, rs, cmin, carg)
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
                max_steps, pgain):
    """Advance the greedy by at most max_steps picks. Returns (npick, nserve, hsize, status, evals).

    status: 0 = stopped by the rule, 1 = step budget used, 2 = stalled (no positive gain left past n),
    3 = pool exhausted. pgain[t] = the exact gain of pick t (at a stall: the best gain, at the stalled step).
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
        pgain[npick] = bg
        if npick >= n and bg <= 0.0:
            return npick, nserve, hsize, 2, evals
        nserve += _add(C, best, cur, assign, counts, picks, npick, selected)
        npick += 1
    return npick, nserve, hsize, 1, evals


def greedy_init(C: np.ndarray, n: int, *, lazy: bool = True, progress: bool = False, first: int | None = None,
                flag: bool | None = None, trace: dict | None = None) -> tuple[np.ndarray, dict]:
    """Stage 1 (method.md 3.1): greedy p-median build with the reference stopping rule; returns rows and info.

    `first` (the first pick, the smallest row sum) and `flag` (more than n distinct column argmins) default to
    their values on C; the blocked path (goracs.selection.scale) passes those of the whole pool when C holds a
    subset of its rows. `trace`, a dict, receives the pick order and each pick's exact gain ("picks", "gains";
    at a stall the last gain is that of the stalled step), which goracs.selection.scale checks rows against."""
    N, M = C.shape
    if not 0 < n <= N:
        raise SelectionError(f"greedy budget must be in [1, {N}], got {n}")
    t0 = time.perf_counter()
    if first is None or flag is None:
        rowsum, carg = _scan(C)
        # If the whole pool has at most n distinct nearest neighbours of validation points, the rule stops at n.
        if flag is None:
            flag = len(np.unique(carg)) > n
        if first is None:
            first = int(np.argmin(rowsum))
    flag, first = bool(flag), int(first)
    cur = np.full(M, np.inf, np.float32)
    assign = np.full(M, -1, np.int64)
    counts = np.zeros(N, np.int64)
    picks = np.empty(N, np.int64)
    selected = np.zeros(N, np.bool_)
    nserve = int(_add(C, first, cur, assign, counts, picks, 0, selected))
    npick = 1
    gains = np.empty(N)
    pgain = np.full(N + 1, np.nan)
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
                                                        selected, hg, hi, hsize, gains, 32, pgain)
        evals += ev
        if bar is not None:
            bar.update(min(npick, n) - min(before, n))
    if bar is not None:
        bar.close()
    order = picks[:npick]
    if trace is not None:
        trace["picks"] = order.copy()
        trace["gains"] = pgain[:npick + (status == 2)].copy()  # pgain[0] (the first pick) is NaN
        trace["status"] = status
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
