"""Exact incremental re-solve of the POO for one exchange (successive shortest paths): ExchangeSolver.

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

The numba kernels are in goracs.selection.ssp (searches, flow lists, plan cost, undo) and
goracs.selection.certify (sparse arc lists and the certificate on all arcs); the cold solve is
goracs.selection.ot.poo.
"""

from __future__ import annotations

import numpy as np

from goracs.selection.base import SelectionError
from goracs.selection.certify import _certify_ctransform, _sparse_lists
from goracs.selection.ot import ctransform, poo
from goracs.selection.ssp import _exchange_kernel, _flow_cost, _flow_cost_lists, _sl_rebuild, _undo


class ExchangeSolver:
    """Exact optimal plan and duals for the selected rows; exchanges re-solved incrementally by SSP.

    With sparse_k > 0 the shortest-path searches use, per source, only its sparse_k cheapest arcs in reduced
    cost (refreshed after each accepted exchange) plus its flow arcs; the result is then certified on all n*M
    arcs (every reduced cost >= -1e-12 makes plan and duals optimal for the full problem). A candidate that
    fails the certificate is rolled back and re-solved on the dense graph, so the answer is always exact.
    """

    def __init__(self, C: np.ndarray, rows: np.ndarray, sparse_k: int = 96):
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
        del G
        dtype = np.int32 if max(n, M) < 2**31 else np.int64
        self.X = np.ascontiguousarray(X.astype(dtype))
        del X
        if not (self.X.sum(0) == M).all() or not (self.X.sum(1) == n).all():
            raise RuntimeError("rounded plan violates the marginals")
        self.u, self.v = u.copy(), v.copy()
        self.units = float(n) * M
        self.total = float(_flow_cost(C, self.rows, self.X))
        self._pending = None
        self.slist = np.zeros((M, 8), np.int64)
        self.scost = np.zeros((M, 8))
        self.scnt = np.zeros(M, np.int64)
        _sl_rebuild(C, self.rows, self.X, self.slist, self.scost, self.scnt, np.arange(M, dtype=np.int64))
        # Dijkstra runs, settled sources, settled sinks, heap pushes, sparse tries, dense fallbacks
        self.stats = np.zeros(6, np.int64)
        self._log = (np.empty(1 << 16, np.int64), np.empty(1 << 16, np.int64), np.empty(1 << 16, self.X.dtype))
        self.sparse_k = int(min(sparse_k, M)) if sparse_k and sparse_k < M else 0
        self._sp = None
        self._commits_since_refresh = 0
        self._dummy = (np.zeros((1, 1), np.int64), np.zeros(1, np.int64))
        self._dummy_c = np.zeros((1, 1))
        self._spc = None
        # c-transform (f1, f2, arg) of the state the last passed certificate checked (see ctransform_current)
        self._ct = (np.empty(M), np.empty(M), np.empty(M, np.int64))
        self._ct_ok = False

    @property
    def value(self) -> float:
        """Current POO."""
        return self.total / self.units

    def _refresh_sparse(self):
        sp, splen, self._spc = _sparse_lists(self.C, self.rows, self.v, self.X, self.sparse_k, 256)
        self._sp = (sp, splen)
        self._commits_since_refresh = 0

    def _run(self, slot, o, sp, splen, use_sparse, saved):
        while True:
            lj, lk, lo = self._log
            dcost, nlog, status = _exchange_kernel(self.C, self.rows, self.u, self.v, self.X, int(slot), int(o),
                                                   lj, lk, lo, self.stats, sp, splen, use_sparse, self.slist,
                                                   self.scost, self.scnt, self._spc if use_sparse else self._dummy_c)
            if status == 0:
                return dcost, nlog, True
            self._restore(slot, saved, nlog)
            if status == 2:
                if use_sparse:
                    return 0.0, 0, False  # a short sink is unreachable in the sparse graph
                raise RuntimeError("SSP found no augmenting path (internal error)")
            # Undo-log overflow: grow the log, redo.
            self._log = tuple(np.empty(2 * len(a), a.dtype) for a in self._log)

    def _restore(self, slot, saved, nlog):
        lj, lk, lo = self._log
        _undo(self.X, lj, lk, lo, nlog)
        self.u[:], self.v[:] = saved[0], saved[1]
        self.rows[slot] = saved[2]
        self.X[:, slot] = saved[3]
        touched = np.unique(np.concatenate([lj[:nlog], np.flatnonzero(saved[3])]))
        _sl_rebuild(self.C, self.rows, self.X, self.slist, self.scost, self.scnt, touched.astype(np.int64))

    def try_exchange(self, slot: int, o: int) -> float:
        """Apply the exchange rows[slot] -> o exactly; return the new POO. Call commit() or rollback() next."""
        if self._pending is not None:
            raise RuntimeError("commit() or rollback() the previous exchange first")
        saved = (self.u.copy(), self.v.copy(), int(self.rows[slot]), self.X[:, slot].copy())
        ok = False
        saved_sp = None
        self._ct_ok = False
        if self.sparse_k:
            if self._sp is None or self._commits_since_refresh >= 25:
                self._refresh_sparse()
            sp, splen = self._sp
            # the incoming row gets its own cheapest arcs in the slot it takes over
            saved_sp = (sp[slot].copy(), int(splen[slot]), self._spc[slot].copy())
            co = self.C[o].astype(np.float64)
            best = np.argpartition(co - self.v, self.sparse_k - 1)[:self.sparse_k]
            sp[slot, :] = -1
            sp[slot, :len(best)] = best
            self._spc[slot, :len(best)] = co[best]
            splen[slot] = len(best)
            refreshed = False
            for _attempt in range(6):
                self.stats[4] += 1
                dcost, nlog, ok = self._run(slot, o, sp, splen, True, saved)
                if not ok:
                    if refreshed:
                        break
                    # a short sink was unreachable (lists full or stale): rebuild the lists once and retry
                    self._refresh_sparse()
                    sp, splen = self._sp
                    saved_sp = (sp[slot].copy(), int(splen[slot]), self._spc[slot].copy())
                    sp[slot, :] = -1
                    sp[slot, :len(best)] = best
                    self._spc[slot, :len(best)] = co[best]
                    splen[slot] = len(best)
                    refreshed = True
                    continue
                if _certify_ctransform(self.C, self.rows, self.u, self.v, 1e-12, sp, splen, self._spc,
                                       *self._ct) >= -1e-12:
                    self._ct_ok = True  # the sweep also left the c-transform of this (final) state
                    break
                # not certified on the full arc set: the violated arcs were added to the lists; retry
                self._restore(slot, saved, nlog)
                ok = False
        if not ok:
            if self.sparse_k:
                self.stats[5] += 1
            dcost, nlog, _ = self._run(slot, o, self._dummy[0], self._dummy[1], False, saved)
        self._dense_used = not ok
        self._pending = (slot, saved, nlog, self.total, saved_sp)
        self.total = self.total + dcost
        return self.value

    def commit(self) -> None:
        """Keep the last exchange; re-sum the plan cost to avoid drift."""
        self._pending = None
        self.total = float(_flow_cost_lists(self.C, self.rows, self.X, self.slist, self.scnt))
        # The lists stay a good guess for a while (the certificate keeps every answer exact); rebuilt every 25
        # commits, and after a dense re-solve, whose new flow arcs the lists do not hold.
        self._commits_since_refresh += 1
        if self._dense_used:
            self._sp = None

    def rollback(self) -> None:
        """Undo the last exchange."""
        slot, saved, nlog, total, saved_sp = self._pending
        self._ct_ok = False
        self._restore(slot, saved, nlog)
        if saved_sp is not None:
            sp, splen = self._sp
            sp[slot] = saved_sp[0]
            splen[slot] = saved_sp[1]
            self._spc[slot] = saved_sp[2]
        self.total = total
        self._pending = None

    def ctransform_current(self):
        """ctransform(C, rows, u) of the current state: (f1, f2, arg, cnt), cnt only as 1 = unique minimiser
        (else 2). Taken from the certificate sweep of the last accepted exchange when there was one (the same
        values, see _certify_ctransform), otherwise computed."""
        if not self._ct_ok:
            return ctransform(self.C, self.rows, self.u)
        f1, f2, arg = (a.copy() for a in self._ct)
        return f1, f2, arg, np.where(f2 > f1, 1, 2).astype(np.int64)

    def plan(self) -> np.ndarray:
        """Current plan as an (n, M) float array (masses)."""
        return self.X.T / self.units


__all__ = ["ExchangeSolver"]
