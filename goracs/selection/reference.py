"""Decision-exact parity mode of ITRA (`mi_estimate="reference"`, method.md 3.3).

This module makes the same greedy picks and the same accepted exchanges as the authors' ITRA code run on a
CPU (checked against a recorded run in tests/test_selection_parity.py). It takes on every behaviour of theirs
that can change a decision:

- Greedy gains are evaluated the way they evaluate them: in float32 torch, as (row sum) - sum_j |m_j - C_oj|
  with m the running column minimum, and the smallest value wins (first row index among equal values). In
  exact arithmetic this ranks rows like the float64 gain sum_j max(m_j - C_oj, 0) of the tight engine, but
  near-ties (and exact ties: once m reaches the pool's column minima every gain is 0) are resolved by float32
  rounding. The first pick is the smallest numpy float32 row sum.
- The greedy stopping rule: stop at n when the pool has at most n distinct column argmins, otherwise keep
  adding until n picks each serve a column (argmin over the picks in pick order), then drop the others.
- The selection is an ordered list: an exchange removes i and appends o at the end. Each round ranks the
  candidates with the dual potentials u of a cold `ot.emd2` solve of the rows in that order (uniform masses,
  at most 300,000 network-simplex iterations). The OT problem is degenerate, so its optimal duals are not
  unique; the cold solve's duals depend on the row order and differ from those of an incremental re-solve.
- The MI estimate is their float32 torch pipeline: f_j = min over S of fl32(C_kj - u_k); rows of S also enter
  the scoring as fl32(fl32(C_k - u_k) + u_k) (their working copy is shifted and shifted back in place, which
  need not restore it exactly); y = the R-th LARGEST of C_o - f; F = mean_j min((C_o - y) - f, 0) + y / n, all
  in float32. No leave-one-out for members of S.
- Pruning: the cut_num outside rows with the lowest F (torch argsort) and the cut_num rows of S with the
  highest F, kept in ascending order of F; pairs are tried inner-major, and the first pair whose cold POO is
  strictly below the current one is accepted (no tolerance). The run stops after max_iters accepted exchanges
  or a round without an improving pair. pass@1 = rounds whose first pair was accepted / accepted exchanges.

Speed without changing a decision: a pair is rejected without a cold solve when the exact incremental re-solve
(exchange.ExchangeSolver) or the weak-duality bound puts its POO at least DECIDE_TOL above the current one (both agree
with a converged cold solve to ~1e-15); every other pair, and every accepted one, gets the cold solve, whose
value alone decides, as in their code. If a cold solve stops at the iteration cap (its value is then not the
optimum, and can even be below it), every later pair is decided by a cold solve; `cold_pairs=True` does that
from the start, which is the only way to follow their code where a solve they skipped here would have stopped
at the cap (at 1,024 x 5,000 one cold solve converges well within it).
"""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import ot as pot

from goracs.selection.base import SelectionError
from goracs.selection.exchange import ExchangeSolver
from goracs.selection.mi import _pair_bounds
from goracs.selection.ot import ceil_div

COLD_MAX_ITER = 300_000  # the authors' cap on network-simplex iterations per cold solve
DECIDE_TOL = 1e-9  # incremental / bound values this far above the current POO reject a pair without a solve
_CHUNK_ELEMS = 1 << 24  # float32 elements per torch work chunk (64 MiB); results do not depend on it


def _as_f32(C: np.ndarray) -> np.ndarray:
    C = np.asarray(C)
    if C.ndim != 2:
        raise SelectionError(f"cost matrix must be 2-d, got shape {C.shape}")
    if C.dtype != np.float32:
        warnings.warn("reference mode works on the float32 cost, as the authors' code does; casting", stacklevel=3)
    return np.ascontiguousarray(C, dtype=np.float32)


def _row_step(M: int, chunk_rows: int | None) -> int:
    return int(chunk_rows) if chunk_rows else max(1, _CHUNK_ELEMS // max(M, 1))


def cold_solve(C: np.ndarray, order) -> tuple[float, np.ndarray, bool]:
    """A cold `ot.emd2` of the rows `order` (in that order), as the authors call it: (value, u, converged)."""
    order = list(order)
    m, M = len(order), C.shape[1]
    a = np.ones(m) / m
    b = np.ones(M) / M
    val, log = pot.emd2(a, b, C[order, :], numItermax=COLD_MAX_ITER, log=True)
    return float(val), np.asarray(log["u"], dtype=np.float64), log.get("warning") is None


# ----------------------------------------------------------------------------------------------------------
# Stage 1


def greedy_reference(C: np.ndarray, n: int, *, chunk_rows: int | None = None,
                     progress: bool = False) -> tuple[np.ndarray, dict]:
    """The authors' greedy with their float32 gains and stopping rule: (rows in pick order, info)."""
    import torch

    t0 = time.perf_counter()
    C = _as_f32(C)
    N, M = C.shape
    if not 0 < n <= N:
        raise SelectionError(f"greedy budget must be in [1, {N}], got {n}")
    Ct = torch.from_numpy(C)
    step = _row_step(M, chunk_rows)
    spans = [(a, min(N, a + step)) for a in range(0, N, step)]
    rowsum = torch.cat([Ct[a:b].sum(dim=1) for a, b in spans])  # float32, per row as over the whole matrix
    # More than n distinct nearest rows (first index on ties) means: add past n until n picks serve a column.
    flag = len(np.unique(np.argmin(C, axis=0))) > n
    colmin = C.min(axis=0)
    first = int(np.argmin(C.sum(axis=1)))  # numpy float32 row sums
    picks = [first]
    picked = np.zeros(N, np.bool_)
    picked[first] = True
    cur = Ct[first].clone()
    server = np.full(M, first, np.int64)  # the earliest pick attaining each column's minimum over the picks
    evals = 0
    status = "rule"
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="ITRA greedy (reference)", unit="pick")
        bar.update(1)
    while True:
        if len(picks) >= n:
            if not flag or len(np.unique(server)) >= n:
                break
            if np.array_equal(cur.numpy(), colmin):
                # Tied column minima can leave fewer than n serving picks for good: no later pick can lower a
                # column minimum, so none can ever serve. Their code would go on through the whole pool and
                # then fail on an empty candidate set; stop here instead (kept rows: see below).
                status = "stalled"
                break
        gain = torch.cat([rowsum[a:b] - (cur - Ct[a:b]).abs().sum(dim=1) for a, b in spans])
        rest = torch.from_numpy(np.flatnonzero(~picked))
        evals += len(rest)
        e = int(rest[gain[rest].argmin()])
        better = C[e] < cur.numpy()  # strict: a tie stays with the earlier pick
        server[better] = e
        cur = torch.minimum(cur, Ct[e])
        picks.append(e)
        picked[e] = True
        if bar is not None and len(picks) <= n:
            bar.update(1)
    if bar is not None:
        bar.close()
    order = np.asarray(picks, dtype=np.int64)
    if flag:
        serving = np.isin(order, server)
        # (stalled: keep the serving picks, then the earliest others up to n, as the tight greedy does)
        order = np.concatenate([order[serving], order[~serving][:max(0, n - int(serving.sum()))]])
    info = {"greedy_picks": len(picks), "greedy_dropped": len(picks) - len(order), "greedy_evals": int(evals),
            "greedy_status": status, "greedy_flag": bool(flag),
            "greedy_relaxed_obj": float(np.sum(cur.numpy(), dtype=np.float64)), "greedy_order": order.tolist(),
            "time_greedy_s": time.perf_counter() - t0}
    return order, info


# ----------------------------------------------------------------------------------------------------------
# Stage 2


def mi_scores_reference(C: np.ndarray, order, u, *, chunk_rows: int | None = None):
    """The authors' float32 MI estimate of every row (a float32 torch tensor), for the rows `order` with duals u
    (aligned to `order`). Rows of S are scored too (their inner score); see the module docstring."""
    import torch

    C = _as_f32(C)
    N, M = C.shape
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    R = ceil_div(M, n)
    Ct = torch.from_numpy(C)
    uS = torch.from_numpy(np.asarray(u, dtype=np.float64)).unsqueeze(1)
    shifted = Ct[torch.from_numpy(order)].clone()
    shifted.sub_(uS)  # float32 storage, float64 arithmetic: fl32(C - u)
    f = shifted.min(dim=0).values  # float32 c-transform
    shifted.add_(uS)  # their shift back, which may leave the rows of S off by an ulp
    where = np.full(N, -1, np.int64)
    where[order] = np.arange(n)
    zero = torch.tensor(0)
    step = _row_step(M, chunk_rows)
    out = []
    for a in range(0, N, step):
        b = min(N, a + step)
        W = Ct[a:b].clone()
        loc = np.flatnonzero(where[a:b] >= 0)
        if len(loc):
            W[torch.from_numpy(loc)] = shifted[torch.from_numpy(where[a:b][loc])]
        y = (W - f).topk(k=R, dim=1, largest=True)[0][:, -1]
        W.sub_(y.unsqueeze(1))
        out.append(torch.minimum(W - f, zero).mean(dim=1) + y / n)
    return torch.cat(out)


def prune_reference(F, order, N: int, cut_num: int) -> tuple[list[int], list[int]]:
    """(inner, outer) candidates in the order tried: the cut_num rows of S with the highest F, ascending; the
    cut_num outside rows with the lowest F, ascending (torch argsort, as theirs)."""
    import torch

    S = np.asarray(order, dtype=np.int64)
    outside = np.setdiff1d(np.arange(N), S)
    outer = outside[F[torch.from_numpy(outside)].argsort()[:cut_num].numpy()]
    inner = S[F[torch.from_numpy(S)].argsort()[-cut_num:].numpy()]
    return [int(i) for i in inner], [int(o) for o in outer]


def refine_reference(C: np.ndarray, rows, *, max_iters: int = 100, cut_num: int = 30, screen: bool = True,
                     cold_pairs: bool = False, verify: bool = False, progress: bool = False,
                     chunk_rows: int | None = None) -> tuple[np.ndarray, dict]:
    """The authors' refinement, decision for decision. `rows` is the ordered selection (the greedy's pick order
    for a parity run: the order changes the cold solves' duals, hence the ranking). Returns (sorted rows, report);
    report["final_order"] is the list in the authors' order, report["accepted_pairs"] the (out, in) pairs."""

    t0 = time.perf_counter()
    c0 = time.process_time()
    C = _as_f32(C)
    N, M = C.shape
    order = [int(r) for r in rows]
    n = len(order)
    if n == 0 or len(set(order)) != n:
        raise SelectionError("refine needs a non-empty selection of distinct rows")
    R = ceil_div(M, n)
    s, u, ok = cold_solve(C, order)
    if not ok and not cold_pairs:
        warnings.warn("the first cold ot.emd2 stopped at the authors' iteration cap; deciding every pair by a cold "
                      "solve", RuntimeWarning, stacklevel=2)
    exact = bool(cold_pairs) or not ok  # decide every pair by a cold solve
    not_converged = int(not ok)
    es = None if exact else ExchangeSolver(C, np.asarray(order))
    traj, times = [s], [0.0]
    t_init = time.perf_counter() - t0
    c_init = time.process_time() - c0
    accepted = rounds = pass1 = tried = solved = screened = colds = 0
    pairs = []
    max_verify_err = 0.0
    stop = "max_iters"
    bar = None
    if progress and max_iters > 0:
        from tqdm import tqdm
        bar = tqdm(total=max_iters, desc="ITRA refine (reference)", unit="exch")
    while accepted < max_iters:
        if n >= N:
            stop = "no_outside_candidates"
            break
        rounds += 1
        F = mi_scores_reference(C, order, u, chunk_rows=chunk_rows)
        inner, outer = prune_reference(F, order, N, cut_num)
        outer_arr = np.asarray(outer, dtype=np.int64)
        ct = es.ctransform_current() if (es is not None and screen) else None
        first = True
        done = False
        lbs = None
        slot = -1
        last_inner = None
        for i, o in itertools.product(inner, outer):
            t = outer.index(o)
            tried += 1
            if es is not None and i != last_inner:
                slot = int(np.flatnonzero(es.rows == i)[0])
                lbs = _pair_bounds(C, es.rows, es.u, *ct, slot, outer_arr, R) if ct is not None else None
                last_inner = i
            pending = False
            if es is not None:
                if lbs is not None and lbs[t] >= s + DECIDE_TOL:
                    screened += 1  # even its dual lower bound is above the current POO: rejected
                    first = False
                    continue
                solved += 1
                val = es.try_exchange(slot, o)
                pending = True
                if val >= s + DECIDE_TOL:  # the exact value is above the current POO: rejected
                    es.rollback()
                    first = False
                    continue
            cand = [r for r in order if r != i] + [o]
            colds += 1
            new, new_u, ok = cold_solve(C, cand)
            not_converged += int(not ok)
            if not ok and not exact:
                warnings.warn("a cold ot.emd2 stopped at the authors' iteration cap; deciding every later pair by a "
                              "cold solve", RuntimeWarning, stacklevel=2)
            if new < s:
                if es is not None:
                    if not pending:
                        es.try_exchange(slot, o)
                    es.commit()
                    err = abs(es.value - new)
                    max_verify_err = max(max_verify_err, err)
                    if verify and err > 1e-9 and ok:
                        raise RuntimeError(f"incremental POO {es.value!r} differs from the cold solve {new!r}")
                order, s, u = cand, new, new_u
                accepted += 1
                pass1 += first
                pairs.append((int(i), int(o)))
                traj.append(s)
                times.append(time.perf_counter() - t0)
                done = True
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(poo=f"{s:.6f}")
            elif pending:
                es.rollback()
            if not ok and not exact:
                exact, es = True, None
            if done:
                break
            first = False
        if not done:
            stop = "no_improving_pair"
            break
    if bar is not None:
        bar.close()
    report = {"poo_trajectory": traj, "refine_times_s": times, "accepted": accepted, "rounds": rounds,
              "pass_at_1": pass1 / accepted if accepted else float("nan"), "exchanges_tried": tried,
              "exchanges_solved": solved, "exchanges_screened": screened, "cold_solves": colds + 1,
              "cold_not_converged": not_converged, "refine_stop": stop, "time_refine_s": time.perf_counter() - t0,
              "time_refine_init_s": t_init, "cpu_refine_s": time.process_time() - c0, "cpu_refine_init_s": c_init,
              "mi_estimate": "reference", "cold_pairs": bool(cold_pairs),
              "ssp_stats": (es.stats.tolist() if es is not None else [0] * 6),
              "outer_full_rescores": rounds, "outer_partial_rows": 0, "accepted_pairs": pairs,
              "final_order": list(order), "max_verify_err": max_verify_err}
    return np.sort(np.asarray(order, dtype=np.int64)), report


__all__ = ["greedy_reference", "refine_reference", "mi_scores_reference", "prune_reference", "cold_solve",
           "COLD_MAX_ITER", "DECIDE_TOL"]
