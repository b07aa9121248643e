"""Numba kernels of the exact incremental re-solve (goracs.selection.exchange.ExchangeSolver): successive shortest
paths for one exchange (_exchange_kernel), the indexed 4-ary heap of its Dijkstra searches, the per-sink flow
lists, the plan cost and the undo of a rejected exchange.

Plans are integer flows X (sinks x sources) in units of 1/(n*M); see goracs.selection.exchange.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_SNAP = 1e-13  # reduced costs below this are float noise on tight arcs: treat as exactly zero


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
