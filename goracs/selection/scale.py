"""ITRA without the dense N x M cost matrix (`cost_storage=blocked`): the same selection as the dense path, with
only a candidate subset of the cost rows in memory (docs/selection.md, "Selection at a million samples").

The cost of a row is recomputed, never stored, except for a pool K of candidate rows:

1. Pass A over the chunks: distances only, per-row min / max -> the global min-max normaliser (streaming).
2. Pass B: every chunk's exact float32 cost rows (the same chunks and arithmetic as cost.compute_cost, so the
   same bits), from which the row sums and the first column argmins of the whole pool (the greedy's first pick
   and its stopping-rule flag, exactly) and the pool K: the union over columns of the `per_column` rows with
   the smallest cost in that column (kept as exact rows), plus the first pick.
3. ITRA (greedy_init, refine: the dense engine, unchanged) on C[K], K sorted so that every tie by row index
   is decided as on the whole pool; it records every decision that rows outside K could have changed: each
   greedy pick's exact gain and each round's outer threshold (the last of the cut_num candidates) with the
   duals' c-transform f.
4. Pass C (the check): for every row o outside K, exactly (the same numba arithmetic as the engine, on the
   exact recomputed row): no greedy step where o's gain beats the pick's (or ties it with a smaller index) and
   no refinement round where o's tight score beats the threshold (or ties it with a smaller index). Bounds
   skip most evaluations: a gain can only shrink as the selection grows (so one value clears every later step
   whose pick gain is larger), and a tight score drops by at most the shift slack of the duals' change
   (outer._shift_slack). A row that fails would have changed a decision: it joins K (its exact row comes from
   this pass) and steps 3-4 run again. When nothing fails, every decision on C[K] is the decision on C: the
   same picks, exchanges and indices as the dense path.
"""

from __future__ import annotations

import time
import warnings

import numba as nb
import numpy as np

from goracs.selection.base import SelectionError
from goracs.selection.cost import _CostPlan
from goracs.selection.greedy import _gain, _scan_rows
from goracs.selection.mi import _mi_from_d_y, _mi_tight_row_y
from goracs.selection.ot import ceil_div
from goracs.selection.outer import _shift_slack
from goracs.selection.refine import itra_traced

COST_STORAGES = ("auto", "dense", "blocked")


def choose_storage(storage: str, n_rows: int, n_cols: int, dense_max_gib: float) -> str:
    """'dense' or 'blocked': `auto` takes the dense matrix while its float32 size is at most dense_max_gib."""
    if storage not in COST_STORAGES:
        raise SelectionError(f"cost_storage must be one of {COST_STORAGES}, got {storage!r}")
    if storage != "auto":
        return storage
    return "dense" if 4.0 * n_rows * n_cols <= dense_max_gib * 2**30 else "blocked"


# ---------------------------------------------------------------- exact chunks


def _exact_chunk(plan: _CostPlan, s: int) -> np.ndarray:
    """Chunk s of the normalised cost, bit for bit as cost.compute_cost stores it (float32, on the CPU)."""
    blk = plan.distances(s).cpu().contiguous()  # on the CPU the tensor itself; from cuda a copy
    plan.normalise_(blk, s)
    return blk.numpy()


@nb.njit(cache=True)
def _pool_update(B, s, topv, topi, count, evicted):
    """Insert the rows of chunk B (global offset s) into the per-column lists of the r smallest costs (topv[j]
    ascending, topi[j] their rows); count[k] = the columns whose list holds row k. Rows whose count falls to 0
    are written to `evicted`; returns how many."""
    m, M = B.shape
    r = topv.shape[1]
    ne = 0
    for i in range(m):
        for j in range(M):
            c = B[i, j]
            if c < topv[j, r - 1]:
                out = topi[j, r - 1]
                p = r - 1
                while p > 0 and topv[j, p - 1] > c:
                    topv[j, p] = topv[j, p - 1]
                    topi[j, p] = topi[j, p - 1]
                    p -= 1
                topv[j, p] = c
                topi[j, p] = s + i
                count[s + i] += 1
                if out >= 0:
                    count[out] -= 1
                    if count[out] == 0:
                        evicted[ne] = out
                        ne += 1
    return ne


class _Pool:
    """Per column the `r` rows with the smallest cost seen so far, and the exact rows of their union."""

    def __init__(self, N: int, M: int, r: int):
        self.topv = np.full((M, r), np.inf, np.float32)
        self.topi = np.full((M, r), -1, np.int64)
        self.count = np.zeros(N, np.int32)
        self.rows: dict[int, np.ndarray] = {}
        self._ev = np.empty(0, np.int64)

    def add(self, B: np.ndarray, s: int) -> None:
        if len(self._ev) < B.size:
            self._ev = np.empty(B.size, np.int64)
        ne = _pool_update(B, s, self.topv, self.topi, self.count, self._ev)
        for k in self._ev[:ne]:
            k = int(k)
            if k < s and self.count[k] == 0:  # (a row of this chunk may enter again after leaving)
                self.rows.pop(k, None)
        for i in np.flatnonzero(self.count[s:s + len(B)] > 0):
            self.rows[int(s + i)] = B[i].copy()


# ---------------------------------------------------------------- the check of the rows outside K


@nb.njit(cache=True)
def _check_greedy(B, gidx, curs, gains, gpick, smin, fail, evals):
    """Flag the rows of B (global indices gidx) that some greedy step would have picked instead of its pick.

    Step t (t >= 1; S_t = the first t picks, curs[t] their column minima) picked gpick[t] with exact gain
    gains[t]; row o would have changed it if gain_o(S_t) > gains[t], or equal with o < gpick[t] (gpick -1: a
    stall, where any positive gain changes the outcome). gain_o(S_t) is computed as greedy._gain does; it never
    grows with t, so an exact value G at step s clears every later step with gains > G (smin[t] = the smallest
    gain from step t on)."""
    T = gains.shape[0]
    for i in range(B.shape[0]):
        o = gidx[i]
        G = np.inf
        t = 1
        while t < T:
            if G < smin[t]:
                break
            if G < gains[t]:
                t += 1
                continue
            Gt = _gain(B, i, curs[t])
            evals[0] += 1
            if Gt > gains[t] or (Gt == gains[t] and o < gpick[t]):
                fail[i] = True
                break
            G = Gt
            t += 1


@nb.njit(cache=True)
def _tight_score(B, i, f, R, n, d):
    """The engine's exact tight outer score of row i (mi._tight_scores_y's arithmetic)."""
    if R <= 32:
        dummy = np.zeros(1, np.int64)
        return _mi_tight_row_y(B, i, f, f, dummy, dummy, -1, R, n)[0]
    for j in range(f.shape[0]):
        d[j] = float(B[i, j]) - f[j]
    return _mi_from_d_y(d, R, n, False)[0]


@nb.njit(cache=True)
def _check_outer(B, gidx, F, tau, trow, slack, R, n, fail, evals):
    """Flag the rows of B that some refinement round would have taken among its outer candidates.

    Round t kept the rows whose (score, index) is at most (tau[t], trow[t]); row o would have entered if its
    exact score at f = F[t] is below tau[t], or equal with o < trow[t]. From an exact score at round s, the
    score at round t is at least that minus slack[s, t] (outer._shift_slack of F[t] - F[s]), which clears
    round t when it stays above tau[t]."""
    T = F.shape[0]
    d = np.empty(F.shape[1])
    for i in range(B.shape[0]):
        if fail[i]:
            continue
        o = gidx[i]
        s = -1
        Fs = 0.0
        for t in range(T):
            if s >= 0 and Fs - slack[s, t] > tau[t]:
                continue
            Ft = _tight_score(B, i, F[t], R, n, d)
            evals[0] += 1
            if Ft < tau[t] or (Ft == tau[t] and o < trow[t]):
                fail[i] = True
                break
            s = t
            Fs = Ft


def _slack_table(F: np.ndarray, n: int) -> np.ndarray:
    T = len(F)
    out = np.full((T, T), np.inf)
    for s in range(T):
        out[s, s:] = np.atleast_1d(_shift_slack(F[s:] - F[s][None, :], n))
    return out


# ---------------------------------------------------------------- the blocked selection


def itra_blocked(train_emb, val_emb, grad_norms, lam: float, n: int, *, device: str = "auto", chunk_rows: int = 2048,
                 scale_distances: bool = True, grad_max: float | None = None, per_column: int | None = None,
                 max_pool_rows: int = 200_000, max_rounds: int = 10, progress: bool = False,
                 **itra_kwargs) -> tuple[np.ndarray, dict]:
    """cost.compute_cost + refine.itra with the same result, holding only a candidate pool of the cost rows.

    per_column: rows kept per validation column in the pool (default: max_pool_rows // M, between 4 and 64).
    Returns (sorted train indices, report): the report of itra plus "blocked" (pool size, check rounds, rows
    added by the checks, exact evaluations in the checks, pass times)."""
    if itra_kwargs.get("mi_estimate", "tight") != "tight":
        raise SelectionError("cost_storage=blocked supports mi_estimate=tight only (the reference mode re-scores "
                             "every row in float32 each round); use cost_storage=dense")
    t0 = time.perf_counter()
    plan = _CostPlan(train_emb, val_emb, grad_norms, lam, device, chunk_rows, scale_distances, grad_max)
    N, M = plan.N, plan.M
    cut_num = int(itra_kwargs.get("cut_num", 30))
    if n >= N:  # as refine.itra
        warnings.warn(f"budget {n} >= pool size {N}: returning the whole pool", stacklevel=2)
        return np.arange(N), {"whole_pool": True}
    r = int(per_column) if per_column is not None else int(min(64, max(4, max_pool_rows // M)))
    if r < 1:
        raise SelectionError(f"per_column must be >= 1, got {per_column}")
    times = {}
    # Pass A: the normaliser.
    plan.fit_range(progress, "blocked cost: range")
    times["pass_range_s"] = time.perf_counter() - t0
    # Pass B: row sums, column argmins, the pool.
    t1 = time.perf_counter()
    rowsum = np.empty(N)
    cmin = np.full(M, np.inf, np.float32)
    carg = np.zeros(M, np.int64)
    pool = _Pool(N, M, min(r, N))
    best_row, best_sum = None, np.inf
    for s in plan.starts(progress, "blocked cost: pool"):
        B = _exact_chunk(plan, s)
        _scan_rows(B, s, rowsum, cmin, carg)
        e = s + len(B)
        i = int(np.argmin(rowsum[s:e]))
        if rowsum[s + i] < best_sum:  # strict: the first row with the smallest sum, as np.argmin
            best_sum, best_row = rowsum[s + i], (s + i, B[i].copy())
        pool.add(B, s)
    first = int(np.argmin(rowsum))
    flag = len(np.unique(carg)) > n
    assert best_row[0] == first
    rows_store = pool.rows
    rows_store.setdefault(first, best_row[1])
    del pool, rowsum
    times["pass_pool_s"] = time.perf_counter() - t1
    K = np.array(sorted(rows_store), dtype=np.int64)
    # guarantee room for the greedy and cut_num outer candidates: add the rows after `first` if K is tiny
    need = min(N, 2 * n + cut_num + 1)
    extra_needed = need - len(K)
    CK = _stack(rows_store, K)
    del rows_store
    if extra_needed > 0:
        K, CK = _grow_to(plan, K, CK, need, progress)
    report_b = {"per_column": r, "pool_rows": int(len(K)), "check_rounds": 0, "rows_added": 0,
                "check_evals_greedy": 0, "check_evals_outer": 0}
    R = ceil_div(M, n)
    while True:
        report_b["check_rounds"] += 1
        tg, tr = {}, {}
        kfirst = int(np.searchsorted(K, first))
        rows_k, info = itra_traced(CK, n, first=kfirst, flag=flag, greedy_trace=tg, refine_trace=tr, progress=progress,
                                   **itra_kwargs)
        t2 = time.perf_counter()
        # what rows outside K are checked against, in global indices
        picks = K[tg["picks"]]
        gains = np.asarray(tg["gains"], dtype=np.float64)
        T = len(gains)
        gpick = np.full(T, -1, np.int64)
        gpick[: len(picks)] = picks
        if tg["status"] == 3:  # K ran out of rows: every outside row could be the next pick
            gains = np.append(gains[: len(picks)], -np.inf)
            gpick = np.append(gpick[: len(picks)], -1)
            T = len(gains)
        curs = np.empty((max(T, 1), M), np.float32)
        cur = np.full(M, np.inf, np.float32)
        for t in range(1, T):
            np.minimum(cur, CK[tg["picks"][t - 1]], out=cur)
            curs[t] = cur
        smin = np.minimum.accumulate(np.where(np.isnan(gains), np.inf, gains)[::-1])[::-1].copy()
        F = np.asarray(tr.get("f", np.zeros((0, M))), dtype=np.float64).reshape(-1, M)
        tau = np.asarray(tr.get("tau", []), dtype=np.float64)
        trow = np.asarray([K[i] if i >= 0 else -1 for i in tr.get("tau_row", [])], dtype=np.int64)
        slack = _slack_table(F, n) if len(F) else np.zeros((0, 0))
        inK = np.zeros(N, np.bool_)
        inK[K] = True
        added: dict[int, np.ndarray] = {}
        ev_g = np.zeros(1, np.int64)
        ev_o = np.zeros(1, np.int64)
        for s in plan.starts(progress, "blocked cost: check"):
            e = min(N, s + plan.chunk_rows)
            out = np.flatnonzero(~inK[s:e])
            if not len(out):
                continue
            B = _exact_chunk(plan, s)
            Bo = np.ascontiguousarray(B[out])
            gidx = (s + out).astype(np.int64)
            fail = np.zeros(len(out), np.bool_)
            _check_greedy(Bo, gidx, curs, gains, gpick, smin, fail, ev_g)
            if len(F):
                _check_outer(Bo, gidx, F, tau, trow, slack, R, n, fail, ev_o)
            for i in np.flatnonzero(fail):
                added[int(gidx[i])] = Bo[i].copy()
        report_b["check_evals_greedy"] += int(ev_g[0])
        report_b["check_evals_outer"] += int(ev_o[0])
        times[f"pass_check_{report_b['check_rounds']}_s"] = time.perf_counter() - t2
        if not added:
            break
        if report_b["check_rounds"] >= max_rounds:
            raise SelectionError(f"cost_storage=blocked: the check still adds rows after {max_rounds} rounds "
                                 f"({len(added)} this round, pool {len(K)}); use cost_storage=dense")
        report_b["rows_added"] += len(added)
        K, CK = _merge(K, CK, added)
        report_b["pool_rows"] = int(len(K))
    idx = np.sort(K[rows_k])
    report_b.update(times)
    info["blocked"] = report_b
    info["time_cost_s"] = times["pass_range_s"] + times["pass_pool_s"]
    info["time_blocked_total_s"] = time.perf_counter() - t0
    return idx, info


def _stack(store: dict, K: np.ndarray) -> np.ndarray:
    """The exact rows of K (ascending) as one array, freeing the dict's copies as it goes."""
    M = len(next(iter(store.values())))
    out = np.empty((len(K), M), np.float32)
    for t, k in enumerate(K):
        out[t] = store.pop(int(k))
    return out


def _merge(K: np.ndarray, CK: np.ndarray, added: dict) -> tuple[np.ndarray, np.ndarray]:
    newk = np.array(sorted(added), dtype=np.int64)
    K2 = np.concatenate([K, newk])
    order = np.argsort(K2, kind="stable")
    K2 = K2[order]
    out = np.empty((len(K2), CK.shape[1]), np.float32)
    old_pos = np.flatnonzero(order < len(K))
    out[old_pos] = CK[order[old_pos]]
    new_pos = np.flatnonzero(order >= len(K))
    for p in new_pos:
        out[p] = added[int(K2[p])]
    return K2, out


def _grow_to(plan: _CostPlan, K: np.ndarray, CK: np.ndarray, need: int, progress: bool):
    """Add the first rows outside K until it holds `need` rows (a tiny pool: small N or few columns)."""
    inK = np.zeros(plan.N, np.bool_)
    inK[K] = True
    missing = need - len(K)
    added = {}
    for s in plan.starts(False):
        e = min(plan.N, s + plan.chunk_rows)
        out = np.flatnonzero(~inK[s:e])[:missing - len(added)]
        if len(out):
            B = _exact_chunk(plan, s)
            for i in out:
                added[int(s + i)] = B[i].copy()
        if len(added) >= missing:
            break
    return _merge(K, CK, added)
