"""Exact POO: a cold POT solve, and an exact incremental re-solve for one exchange (successive shortest paths).

Integer form. With n selected rows and M validation columns, scale all masses by n*M: every source supplies
M units and every sink demands n units, so an optimal plan of the uniform problem is an integer flow X
(plan = X / (n*M)) and the POO is sum C*X / (n*M). Network-simplex plans are integral in these units, so
POT's plan converts exactly.

Exchange i -> o. Dropping source i leaves its sinks short by X[:, i] units; the remaining flow with the current
dual potentials (u, v) still satisfies complementary slackness, and o gets u_o = min_j (C_oj - v_j), so every
residual arc has a non-negative reduced cost. Successive shortest paths (Dijkstra on reduced costs, Johnson
potential update) then route o's M units into the short sinks; each augmentation keeps reduced-cost optimality,
so the final flow is optimal: the same POO as a cold solve, at the cost of a few partial Dijkstra searches.
Rejected candidates are rolled back from an undo log.
"""

from __future__ import annotations


import numba as nb
import numpy as np
import ot as pot

from goracs.selection.base import SelectionError

_EMD_MAX_ITER = 50_000_000
_SNAP = 1e-13  # reduced costs below this are float noise on tight arcs: treat as exactly zero


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


# ----------------------------------------------------------------------------------------------------------
# numba kernels


@nb.njit(cache=True, inline="always")
def _less(k1, s1, k2, s2):
    # Heap order: smaller key first; among equal keys the later push first (depth-first through the
    # zero-reduced-cost tree, which reaches a short sink sooner than breadth-first).
    return k1 < k2 or (k1 == k2 and s1 > s2)


@nb.njit(cache=True)
def _heap_push(hk, hs, hn, size, key, seq, node):
    if size >= len(hk):
        nk = np.empty(2 * len(hk), hk.dtype)
        ns = np.empty(2 * len(hs), hs.dtype)
        nn = np.empty(2 * len(hn), hn.dtype)
        nk[:size] = hk[:size]
        ns[:size] = hs[:size]
        nn[:size] = hn[:size]
        hk, hs, hn = nk, ns, nn
    i = size
    hk[i] = key
    hs[i] = seq
    hn[i] = node
    while i > 0:
        p = (i - 1) >> 1
        if _less(hk[i], hs[i], hk[p], hs[p]):
            hk[i], hk[p] = hk[p], hk[i]
            hs[i], hs[p] = hs[p], hs[i]
            hn[i], hn[p] = hn[p], hn[i]
            i = p
        else:
            break
    return hk, hs, hn, size + 1


@nb.njit(cache=True)
def _heap_pop(hk, hs, hn, size):
    key, seq, node = hk[0], hs[0], hn[0]
    size -= 1
    if size > 0:
        hk[0], hs[0], hn[0] = hk[size], hs[size], hn[size]
        i = 0
        while True:
            l = 2 * i + 1
            if l >= size:
                break
            c = l
            r = l + 1
            if r < size and _less(hk[r], hs[r], hk[l], hs[l]):
                c = r
            if _less(hk[c], hs[c], hk[i], hs[i]):
                hk[i], hk[c] = hk[c], hk[i]
                hs[i], hs[c] = hs[c], hs[i]
                hn[i], hn[c] = hn[c], hn[i]
                i = c
            else:
                break
    return key, seq, node, size


@nb.njit(cache=True)
def _exchange_kernel(C, rows, u, v, X, slot, o, log_j, log_k, log_old, stats):
    """Replace source `slot` by train row `o`; route its supply by SSP. Returns (dcost_units, nlog, status)."""
    n = rows.shape[0]
    M = v.shape[0]
    supply_units = M
    # Drop the old source: its sinks become short.
    old_row = rows[slot]
    deficit = np.zeros(M, np.int64)
    dcost = 0.0
    for j in range(M):
        x = X[j, slot]
        if x != 0:
            deficit[j] = x
            dcost -= float(C[old_row, j]) * x
            X[j, slot] = 0
    # Sinks left with no inflow may raise their potential to the c-transform over the remaining sources
    # (a better dual, still feasible), which gives each of them a tight arc and shortens the searches.
    for j in range(M):
        if deficit[j] == n:
            best = np.inf
            for k in range(n):
                if k != slot:
                    r = float(C[rows[k], j]) - u[k]
                    if r < best:
                        best = r
            v[j] = best
    rows[slot] = o
    best = np.inf
    for j in range(M):
        r = float(C[o, j]) - v[j]
        if r < best:
            best = r
    u[slot] = best
    nlog = 0
    cap = log_j.shape[0]
    V = n + M
    dist = np.empty(V)
    pred = np.empty(V, np.int64)
    settled = np.zeros(V, np.bool_)
    order = np.empty(V, np.int64)
    hk = np.empty(4 * V)
    hs = np.empty(4 * V, np.int64)
    hn = np.empty(4 * V, np.int64)
    remaining = supply_units
    while remaining > 0:
        for a in range(V):
            dist[a] = np.inf
            settled[a] = False
        size = 0
        seq = 0
        dist[slot] = 0.0
        pred[slot] = -1
        hk, hs, hn, size = _heap_push(hk, hs, hn, size, 0.0, seq, slot)
        seq += 1
        nset = 0
        target = -1
        D = 0.0
        while size > 0:
            key, _s, node, size = _heap_pop(hk, hs, hn, size)
            if settled[node] or key > dist[node]:
                continue
            settled[node] = True
            order[nset] = node
            nset += 1
            if node < n:
                stats[1] += 1
            else:
                stats[2] += 1
            if node >= n:
                j = node - n
                if deficit[j] > 0:
                    target = j
                    D = key
                    break
                # backward arcs j -> k (cancel flow k -> j), reduced cost u_k + v_j - C_kj (0 in theory)
                vj = v[j]
                for k in range(n):
                    if X[j, k] > 0 and not settled[k]:
                        rc = u[k] + vj - float(C[rows[k], j])
                        if rc < _SNAP:
                            rc = 0.0
                        nd = key + rc
                        if nd < dist[k]:
                            dist[k] = nd
                            pred[k] = node
                            hk, hs, hn, size = _heap_push(hk, hs, hn, size, nd, seq, k)
                            seq += 1
            else:
                k = node
                rk = rows[k]
                uk = u[k]
                for j in range(M):
                    a = n + j
                    if not settled[a]:
                        rc = float(C[rk, j]) - uk - v[j]
                        if rc < _SNAP:
                            rc = 0.0
                        nd = key + rc
                        if nd < dist[a]:
                            dist[a] = nd
                            pred[a] = k
                            hk, hs, hn, size = _heap_push(hk, hs, hn, size, nd, seq, a)
                            seq += 1
        stats[0] += 1
        stats[3] += seq
        if target < 0:
            return dcost, nlog, 2  # cannot happen on a complete bipartite graph
        # Johnson update on settled nodes keeps every reduced cost >= 0 and makes the path tight.
        for t in range(nset):
            a = order[t]
            delta = D - dist[a]
            if delta > 0.0:
                if a < n:
                    u[a] += delta
                else:
                    v[a - n] -= delta
        # Bottleneck along the path sink(target) <- source <- sink <- ... <- source(slot).
        amount = remaining
        if deficit[target] < amount:
            amount = deficit[target]
        a = n + target
        while True:
            k = pred[a]
            if k == slot and a >= n and pred[k] == -1:
                break
            jb = pred[k]  # sink from which we cancel flow of k
            if jb < 0:
                break
            x = X[jb - n, k]
            if x < amount:
                amount = x
            a = jb
        # Augment.
        a = n + target
        while True:
            k = pred[a]
            j = a - n
            if nlog >= cap:
                return dcost, nlog, 1
            log_j[nlog] = j
            log_k[nlog] = k
            log_old[nlog] = X[j, k]
            nlog += 1
            X[j, k] += amount
            dcost += float(C[rows[k], j]) * amount
            jb = pred[k]
            if jb < 0:
                break
            j2 = jb - n
            if nlog >= cap:
                return dcost, nlog, 1
            log_j[nlog] = j2
            log_k[nlog] = k
            log_old[nlog] = X[j2, k]
            nlog += 1
            X[j2, k] -= amount
            dcost -= float(C[rows[k], j2]) * amount
            a = jb
        remaining -= amount
        deficit[target] -= amount
    return dcost, nlog, 0


@nb.njit(cache=True)
def _flow_cost(C, rows, X):
    """Sum of C * X over the plan (units), exact float64 accumulation order by sink."""
    M, n = X.shape
    tot = 0.0
    for j in range(M):
        for k in range(n):
            x = X[j, k]
            if x != 0:
                tot += float(C[rows[k], j]) * x
    return tot


@nb.njit(cache=True)
def _undo(X, log_j, log_k, log_old, nlog):
    for t in range(nlog - 1, -1, -1):
        X[log_j[t], log_k[t]] = log_old[t]


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


# ----------------------------------------------------------------------------------------------------------


class ExchangeSolver:
    """Exact optimal plan and duals for the selected rows; exchanges re-solved incrementally by SSP."""

    def __init__(self, C: np.ndarray, rows: np.ndarray):
        self.C = C
        self.rows = np.asarray(rows, dtype=np.int64).copy()
        n, M = len(self.rows), C.shape[1]
        self.n, self.M = n, M
        if n == 0:
            raise SelectionError("cannot solve the POO of an empty selection")
        if n * M >= 2**62:
            raise SelectionError("problem too large for the integer flow representation")
        val, u, v, G = poo(C[self.rows], return_plan=True)
        X = np.rint(G.T * (float(n) * M))
        # Network-simplex plans are integral in units of 1/(nM); anything else means a solver problem.
        if np.abs(X - G.T * (float(n) * M)).max() > 1e-3:
            raise RuntimeError("POT plan is not integral in units of 1/(n*M)")
        dtype = np.int32 if max(n, M) < 2**31 else np.int64
        self.X = np.ascontiguousarray(X.astype(dtype))
        if not (self.X.sum(0) == M).all() or not (self.X.sum(1) == n).all():
            raise RuntimeError("rounded plan violates the marginals")
        self.u, self.v = u.copy(), v.copy()
        self.units = float(n) * M
        self.total = float(_flow_cost(C, self.rows, self.X))
        self._pending = None
        self.stats = np.zeros(4, np.int64)  # Dijkstra runs, settled sources, settled sinks, heap pushes
        self._log = (np.empty(1 << 16, np.int64), np.empty(1 << 16, np.int64), np.empty(1 << 16, self.X.dtype))

    @property
    def value(self) -> float:
        """Current POO."""
        return self.total / self.units

    def try_exchange(self, slot: int, o: int) -> float:
        """Apply the exchange rows[slot] -> o exactly; return the new POO. Call commit() or rollback() next."""
        if self._pending is not None:
            raise RuntimeError("commit() or rollback() the previous exchange first")
        saved = (self.u.copy(), self.v.copy(), int(self.rows[slot]), self.X[:, slot].copy())
        while True:
            lj, lk, lo = self._log
            dcost, nlog, status = _exchange_kernel(self.C, self.rows, self.u, self.v, self.X, int(slot), int(o),
                                                   lj, lk, lo, self.stats)
            if status == 0:
                break
            # Undo-log overflow: restore, grow the log, redo.
            _undo(self.X, lj, lk, lo, nlog)
            self.u[:], self.v[:] = saved[0], saved[1]
            self.rows[slot] = saved[2]
            self.X[:, slot] = saved[3]
            if status == 2:
                raise RuntimeError("SSP found no augmenting path (internal error)")
            self._log = tuple(np.empty(2 * len(a), a.dtype) for a in self._log)
        self._pending = (slot, saved, nlog, self.total)
        self.total = self.total + dcost
        return self.value

    def commit(self) -> None:
        """Keep the last exchange; re-sum the plan cost to avoid drift."""
        self._pending = None
        self.total = float(_flow_cost(self.C, self.rows, self.X))

    def rollback(self) -> None:
        """Undo the last exchange."""
        slot, saved, nlog, total = self._pending
        lj, lk, lo = self._log
        _undo(self.X, lj, lk, lo, nlog)
        self.u[:], self.v[:] = saved[0], saved[1]
        self.rows[slot] = saved[2]
        self.X[:, slot] = saved[3]
        self.total = total
        self._pending = None

    def plan(self) -> np.ndarray:
        """Current plan as an (n, M) float array (masses)."""
        return self.X.T / self.units


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for positive ints."""
    return -(-a // b)


__all__ = ["poo", "ExchangeSolver", "ctransform", "ceil_div"]
