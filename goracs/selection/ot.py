"""Exact OT on a block of the cost matrix: the cold POT solve (POO value and duals), the c-transform of the duals
over the selected rows, and ceil_div. The incremental re-solve of one exchange is goracs.selection.exchange.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import ot as pot

from goracs.selection.base import SelectionError

_EMD_MAX_ITER = 50_000_000


def poo(cost_rows: np.ndarray, *, return_plan: bool = False):
    """Exact OT between uniform masses on the rows and columns of `cost_rows`: (value, u, v[, plan])."""
    Cs = np.ascontiguousarray(cost_rows, dtype=np.float64)
    n, M = Cs.shape
    if n == 0 or M == 0:
        raise SelectionError(f"POO needs a non-empty cost block, got shape {Cs.shape}")
    a = np.full(n, 1.0 / n)
    b = np.full(M, 1.0 / M)
    if return_plan:
        G, log = pot.emd(a, b, Cs, numItermax=_EMD_MAX_ITER, log=True)
        val = float(log["cost"])
    else:
        val, log = pot.emd2(a, b, Cs, numItermax=_EMD_MAX_ITER, log=True)
        G = None
    if log.get("warning"):
        raise RuntimeError(f"POT's exact solver did not converge: {log['warning']}")
    out = (float(val), np.asarray(log["u"], dtype=np.float64), np.asarray(log["v"], dtype=np.float64))
    return out + (G,) if return_plan else out


@nb.njit(cache=True)
def ctransform(C, rows, u):
    """Column-wise min and second min of C[rows]-u, the slot of the min and how many slots attain it."""
    n = rows.shape[0]
    M = C.shape[1]
    f1 = np.full(M, np.inf)
    f2 = np.full(M, np.inf)
    arg = np.full(M, -1, np.int64)
    cnt = np.zeros(M, np.int64)
    for k in range(n):
        r = rows[k]
        uk = u[k]
        for j in range(M):
            val = float(C[r, j]) - uk
            if val < f1[j]:
                f2[j] = f1[j]
                f1[j] = val
                arg[j] = k
                cnt[j] = 1
            elif val == f1[j]:
                f2[j] = val
                cnt[j] += 1
            elif val < f2[j]:
                f2[j] = val
    return f1, f2, arg, cnt


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for positive ints."""
    return -(-a // b)


__all__ = ["poo", "ctransform", "ceil_div"]
