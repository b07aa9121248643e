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
def _ih_sift_up(hk, hs, hn, pos, i):
    # 4-ary: half the depth of a binary heap (the pop order is the same: every entry has a distinct
    # (key, tie-break) pair, so any correct heap pops the same sequence)
    while i > 0:
        p = (i - 1) >> 2
        if _less(hk[i], hs[i], hk[p], hs[p]):
            hk[i], hk[p] = hk[p], hk[i]
            hs[i], hs[p] = hs[p], hs[i]
            hn[i], hn[p] = hn[p], hn[i]
            pos[hn[i]] = i
            pos[hn[p]] = p
            i = p
        else:
            break


@nb.njit(cache=True)
def _ih_update(hk, hs, hn, pos, size, key, seq, node):
    """Insert `node`, or lower its key (and renew its tie-break) if it is already queued; returns the size."""
    # An indexed heap keeps one entry per node: the old one-push-per-improvement heap popped (and sifted) every
    # stale entry too, which was most of the search time.
    i = pos[node]
    if i < 0:
        i = size
        size += 1
        hn[i] = node
        pos[node] = i
    hk[i] = key
    hs[i] = seq
    _ih_sift_up(hk, hs, hn, pos, i)
    return size


@nb.njit(cache=True)
def _ih_pop(hk, hs, hn, pos, size):
    """Remove the smallest entry; returns (key, node, size)."""
    key, node = hk[0], hn[0]
    pos[node] = -1
    size -= 1
    if size > 0:
        hk[0], hs[0], hn[0] = hk[size], hs[size], hn[size]
        pos[hn[0]] = 0
        i = 0
        while True:
            l = 4 * i + 1
            if l >= size:
                break
            c = l
            e = min(l + 4, size)
            for r in range(l + 1, e):
                if _less(hk[r], hs[r], hk[c], hs[c]):
                    c = r
            if _less(hk[c], hs[c], hk[i], hs[i]):
                hk[i], hk[c] = hk[c], hk[i]
                hs[i], hs[c] = hs[c], hs[i]
                hn[i], hn[c] = hn[c], hn[i]
                pos[hn[i]] = i
                pos[hn[c]] = c
                i = c
            else:
                break
    return key, node, size


@nb.njit(cache=True)
def _sl_add(slist, scost, scnt, j, k, cost):
    # per-sink list of sources with flow and the arc costs; -1 = overflowed, the sink then scans its whole row
    # of X. A listed source always has flow (added when its flow leaves 0, removed when it returns to 0), so the
    # searches read neither X nor C for a listed arc: both were scattered reads (a cache miss each).
    c = scnt[j]
    if c < 0:
        return
    if c < slist.shape[1]:
        slist[j, c] = k
        scost[j, c] = cost
        scnt[j] = c + 1
    else:
        scnt[j] = -1


@nb.njit(cache=True)
def _sl_remove(slist, scost, scnt, j, k):
    c = scnt[j]
    for t in range(c):
        if slist[j, t] == k:
            slist[j, t] = slist[j, c - 1]
            scost[j, t] = scost[j, c - 1]
            scnt[j] = c - 1
            return


@nb.njit(cache=True)
def _sl_rebuild(C, rows, X, slist, scost, scnt, js):
    n = X.shape[1]
    for t in range(js.shape[0]):
        j = js[t]
        c = 0
        for k in range(n):
            if X[j, k] > 0:
                if c < slist.shape[1]:
                    slist[j, c] = k
                    scost[j, c] = float(C[rows[k], j])
                    c += 1
                else:
                    c = -1
                    break
        scnt[j] = c


@nb.njit(cache=True)
def _exchange_kernel(C, rows, u, v, X, slot, o, log_j, log_k, log_old, stats, sp, splen, use_sparse, slist, scost,
                     scnt, spc):
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
            _sl_remove(slist, scost, scnt, j, slot)
    # Sinks left with no inflow may raise their potential to the c-transform over the remaining sources
    # (a better dual, still feasible), which gives each of them a tight arc and shortens the searches.
    for j in range(M):
        if deficit[j] > 0:
            best = np.inf
            bk = -1
            for k in range(n):
                if k != slot:
                    r = float(C[rows[k], j]) - u[k]
                    if r < best:
                        best = r
                        bk = k
            if deficit[j] == n and bk >= 0:  # (with n = 1 there is no other source to raise against)
                v[j] = best
            if use_sparse and splen[slot] < sp.shape[1]:
                # o -> every short sink keeps them reachable when the cheap arcs form separate clusters
                sp[slot, splen[slot]] = j
                spc[slot, splen[slot]] = float(C[o, j])
                splen[slot] += 1
            if use_sparse and bk >= 0 and splen[bk] < sp.shape[1]:
                # the new tight arc into this sink must be searchable in the sparse graph
                sp[bk, splen[bk]] = j
                spc[bk, splen[bk]] = float(C[rows[bk], j])
                splen[bk] += 1
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
    # A settled node's dist is set to -inf (its distance moves to dset, in settle order): the relaxations then
    # need one compare (nd < dist) instead of a settled test and a compare, two unpredictable branches per arc.
    dset = np.empty(V)
    order = np.empty(V, np.int64)
    targets = np.empty(M, np.int64)
    hk = np.empty(V)
    hs = np.empty(V, np.int64)
    hn = np.empty(V, np.int64)
    hpos = np.full(V, -1, np.int64)
    # Zero-length relaxations (tight arcs: the degenerate plan has many) go to a stack instead of the heap.
    # Such an entry has the current minimum key and a newer tie-break than anything queued, i.e. it is exactly
    # what the heap would pop next, and among several the latest first: LIFO. So the pop order (and every
    # result) is that of the heap alone, at O(1) per tight arc. A node moved to the stack from the heap leaves
    # a stale heap entry, skipped when popped like any stale entry.
    snode = np.empty(V, np.int64)
    skey = np.empty(V)
    sseq = np.empty(V, np.int64)
    remaining = supply_units
    while remaining > 0:
        for a in range(V):
            dist[a] = np.inf
            hpos[a] = -1
        size = 0
        seq = 0
        dist[slot] = 0.0
        pred[slot] = -1
        size = _ih_update(hk, hs, hn, hpos, size, 0.0, seq, slot)
        seq += 1
        nset = 0
        ntar = 0
        cum = 0
        D = 0.0
        ssize = 0
        while size > 0 or ssize > 0:
            if ssize > 0 and (size == 0 or _less(skey[ssize - 1], sseq[ssize - 1], hk[0], hs[0])):
                ssize -= 1
                node = snode[ssize]
                key = skey[ssize]
            else:
                key, node, size = _ih_pop(hk, hs, hn, hpos, size)
            if key > dist[node]:  # stale entry, or already settled (dist -inf)
                continue
            dist[node] = -np.inf
            dset[nset] = key
            order[nset] = node
            nset += 1
            if node < n:
                stats[1] += 1
            else:
                stats[2] += 1
            if node >= n:
                j = node - n
                if deficit[j] > 0:
                    # Keep searching until the short sinks found so far can absorb all the remaining supply:
                    # one search then feeds several augmentations (primal-dual), instead of one each.
                    targets[ntar] = j
                    ntar += 1
                    cum += deficit[j]
                    D = key
                    if cum >= remaining:
                        break
                # backward arcs j -> k (cancel flow k -> j), reduced cost u_k + v_j - C_kj (0 in theory)
                vj = v[j]
                dense = scnt[j] < 0
                cnt = n if dense else scnt[j]
                for t in range(cnt):
                    if dense:
                        k = t
                        if X[j, k] <= 0:
                            continue
                        ckj = float(C[rows[k], j])
                    else:
                        k = slist[j, t]
                        ckj = scost[j, t]
                    rc = u[k] + vj - ckj
                    rc = 0.0 if rc < _SNAP else rc
                    nd = key + rc
                    if nd < dist[k]:  # never for a settled k (dist -inf)
                        dist[k] = nd
                        pred[k] = node
                        if nd == key:
                            snode[ssize] = k
                            skey[ssize] = nd
                            sseq[ssize] = seq
                            ssize += 1
                        else:
                            size = _ih_update(hk, hs, hn, hpos, size, nd, seq, k)
                        seq += 1
            else:
                k = node
                rk = rows[k]
                uk = u[k]
                cnt = splen[k] if use_sparse else M
                for t in range(cnt):
                    j = sp[k, t] if use_sparse else t
                    a = n + j
                    # the arc costs sit next to the arc list: no scattered reads of the big cost matrix
                    rc = (spc[k, t] if use_sparse else float(C[rk, j])) - uk - v[j]
                    rc = 0.0 if rc < _SNAP else rc
                    nd = key + rc
                    if nd < dist[a]:  # never for a settled node (dist -inf)
                        dist[a] = nd
                        pred[a] = k
                        if nd == key:
                            snode[ssize] = a
                            skey[ssize] = nd
                            sseq[ssize] = seq
                            ssize += 1
                        else:
                            size = _ih_update(hk, hs, hn, hpos, size, nd, seq, a)
                        seq += 1
        stats[0] += 1
        stats[3] += seq
        if ntar == 0:
            return dcost, nlog, 2  # cannot happen on a complete bipartite graph
        # Johnson update with the last target's distance D: every reduced cost stays >= 0 and every
        # shortest-path-tree path to a target becomes tight, so each can be augmented in turn.
        for t in range(nset):
            a = order[t]
            delta = D - dset[t]
            if delta > 0.0:
                if a < n:
                    u[a] += delta
                else:
                    v[a - n] -= delta
        for tt in range(ntar):
            if remaining == 0:
                break
            target = targets[tt]
            # Bottleneck along sink(target) <- source <- sink <- ... <- source(slot); earlier augmentations
            # of this round may have emptied a backward arc, then this path is skipped.
            amount = remaining
            if deficit[target] < amount:
                amount = deficit[target]
            a = n + target
            while True:
                k = pred[a]
                jb = pred[k]  # sink from which we cancel flow of k (-1 at the root)
                if jb < 0:
                    break
                x = X[jb - n, k]
                if x < amount:
                    amount = x
                a = jb
            if amount <= 0:
                continue
            a = n + target
            while True:
                k = pred[a]
                j = a - n
                if nlog + 2 > cap:
                    return dcost, nlog, 1
                log_j[nlog] = j
                log_k[nlog] = k
                log_old[nlog] = X[j, k]
                nlog += 1
                if X[j, k] == 0:
                    _sl_add(slist, scost, scnt, j, k, float(C[rows[k], j]))
                X[j, k] += amount
                dcost += float(C[rows[k], j]) * amount
                jb = pred[k]
                if jb < 0:
                    break
                j2 = jb - n
                log_j[nlog] = j2
                log_k[nlog] = k
                log_old[nlog] = X[j2, k]
                nlog += 1
                X[j2, k] -= amount
                if X[j2, k] == 0:
                    _sl_remove(slist, scost, scnt, j2, k)
                dcost -= float(C[rows[k], j2]) * amount
                a = jb
            remaining -= amount
            deficit[target] -= amount
    return dcost, nlog, 0


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
def _flow_cost_lists(C, rows, X, slist, scnt):
    """_flow_cost over the per-sink flow lists (O(n + M) instead of O(n M)); same terms in the same order."""
    M, n = X.shape
    tot = 0.0
    buf = np.empty(slist.shape[1], np.int64)
    for j in range(M):
        c = scnt[j]
        if c < 0:  # overflowed list: scan the row
            for k in range(n):
                x = X[j, k]
                if x != 0:
                    tot += float(C[rows[k], j]) * x
            continue
        for t in range(c):  # insertion sort: sources in increasing slot order, as the full scan adds them
            k = slist[j, t]
            p = t
            while p > 0 and buf[p - 1] > k:
                buf[p] = buf[p - 1]
                p -= 1
            buf[p] = k
        for t in range(c):
            k = buf[t]
            tot += float(C[rows[k], j]) * X[j, k]
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


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for positive ints."""
    return -(-a // b)


__all__ = ["poo", "ExchangeSolver", "ctransform", "ceil_div"]

