"""ITRA stage 2 (method.md 3.2-3.3) and the two-stage driver: refine, itra.

Stage 2 tries exchanges (i out, o in) in the order given by the MI estimate (method.md 3.3), screens each pair
with a weak-duality lower bound on its POO, and re-solves the survivors exactly by successive shortest paths
(goracs.selection.exchange.ExchangeSolver) instead of a cold network simplex.

mi_estimate="reference" runs both stages in goracs.selection.reference instead: the authors' decisions exactly
(float32 greedy gains, cold-solve duals, their float32 estimate and ordering), see that module.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from goracs.selection.base import SelectionError
from goracs.selection.exchange import ExchangeSolver
from goracs.selection.greedy import greedy_init
from goracs.selection.mi import MI_MODES, _inner_scores, _pair_bounds
from goracs.selection.ot import ceil_div, poo
from goracs.selection.outer import _LazyOuter
from goracs.selection.reference import greedy_reference, refine_reference

ACCEPT_TOL = 1e-12  # an exchange must lower the POO by more than this (guards against float ties cycling)


def refine(C: np.ndarray, rows: np.ndarray, *, max_iters: int = 100, cut_num: int = 30, mi_estimate: str = "tight",
           screen: bool = True, verify: bool = False, progress: bool = False,
           trace: dict | None = None) -> tuple[np.ndarray, dict]:
    """Stage 2 (method.md 3.2-3.3): first-improvement exchanges ranked by the MI estimate; exact POO each time.

    mi_estimate="reference" hands over to reference.refine_reference (the authors' decisions; `rows` is then
    taken as their ordered list). `trace`, a dict (tight mode), receives per round the duals' c-transform f
    ("f", rounds x M) and the last outer candidate with its score ("tau", "tau_row"): a row outside C that
    scores above it (or equal, with a larger index) could not have entered that round's candidates
    (goracs.selection.scale checks the rows it left out against them)."""
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
        if trace is not None:
            trace.setdefault("f", []).append(f1.copy())
            trace.setdefault("tau", []).append(float(lazy.top_scores[-1]) if len(outer) else np.inf)
            trace.setdefault("tau_row", []).append(int(outer[-1]) if len(outer) else -1)
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
    return itra_traced(C, n, max_iters=max_iters, cut_num=cut_num, mi_estimate=mi_estimate, screen=screen,
                       verify=verify, progress=progress)


def itra_traced(C: np.ndarray, n: int, *, max_iters: int = 100, cut_num: int = 30, mi_estimate: str = "tight",
                screen: bool = True, verify: bool = False, progress: bool = False, first: int | None = None,
                flag: bool | None = None, greedy_trace: dict | None = None,
                refine_trace: dict | None = None) -> tuple[np.ndarray, dict]:
    """itra for n < rows of C, with greedy_init's first / flag / trace and refine's trace (tight mode), which
    goracs.selection.scale uses when C holds a subset of the pool's rows."""
    if mi_estimate == "reference":
        rows, info = greedy_reference(C, n, progress=progress)  # the authors' float32 gains, pick order kept
    else:
        rows, info = greedy_init(C, n, lazy=True, progress=progress, first=first, flag=flag, trace=greedy_trace)
    rows, rep = refine(C, rows, max_iters=max_iters, cut_num=cut_num, mi_estimate=mi_estimate, screen=screen,
                       verify=verify, progress=progress, trace=refine_trace)
    info.update(rep)
    info["poo_greedy"] = rep["poo_trajectory"][0]
    info["poo_final"] = rep["poo_trajectory"][-1]
    return rows, info
