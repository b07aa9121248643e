"""GORACS engine: cost, exact POO, incremental re-solve, ITRA stages, MI estimates, label budgets, selector."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from goracs.selection.base import SelectionError, Signals
from goracs.selection.cost import compute_cost
from goracs.selection.exchange import ExchangeSolver
from goracs.selection.goracs import GoracsSelector
from goracs.selection.greedy import greedy_init
from goracs.selection.label import class_budgets
from goracs.selection.mi import mi_scores
from goracs.selection.ot import poo
from goracs.selection.refine import itra, refine


def _lp_ot(Cs):
    """OT value by a plain LP (scipy linprog), independent of POT."""
    n, M = Cs.shape
    A = []
    for i in range(n):
        r = np.zeros((n, M)); r[i] = 1; A.append(r.ravel())
    for j in range(M):
        r = np.zeros((n, M)); r[:, j] = 1; A.append(r.ravel())
    b = np.r_[np.full(n, 1 / n), np.full(M, 1 / M)]
    res = scipy.optimize.linprog(Cs.ravel(), A_eq=np.array(A), b_eq=b, bounds=(0, None), method="highs")
    assert res.status == 0
    return res.fun


def _clusters(N, M, d=8, seed=0):
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(5, d))
    X = cent[rng.integers(5, size=N)] + 0.5 * rng.normal(size=(N, d))
    Y = cent[rng.integers(5, size=M)] + 0.5 * rng.normal(size=(M, d))
    g = rng.gamma(5.0, 1.0, size=N)
    return X.astype(np.float32), Y.astype(np.float32), g


# ---------------------------------------------------------------- cost


def test_cost_matches_formula_and_chunking():
    X, Y, g = _clusters(50, 20)
    lam = 0.3
    D = np.linalg.norm(X[:, None, :].astype(np.float64) - Y[None].astype(np.float64), axis=2)
    Ct = D / D.max() - lam * (g / g.max())[:, None]
    ref = (Ct - Ct.min()) / (Ct.max() - Ct.min())
    C1 = compute_cost(X, Y, g, lam, chunk_rows=7)
    C2 = compute_cost(X, Y, g, lam, chunk_rows=1000)
    assert C1.dtype == np.float32 and C1.shape == (50, 20)
    np.testing.assert_allclose(C1, ref, atol=2e-5)
    np.testing.assert_allclose(C1, C2, atol=1e-6)  # BLAS blocking differs by chunk size
    assert C1.min() == 0.0 and C1.max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", ["nan_emb", "inf_grad", "len", "empty_val", "dim", "neg_grad"])
def test_cost_rejects_bad_input(bad):
    X, Y, g = _clusters(30, 10)
    if bad == "nan_emb":
        X[3, 2] = np.nan
    elif bad == "inf_grad":
        g[4] = np.inf
    elif bad == "len":
        g = g[:-1]
    elif bad == "empty_val":
        Y = Y[:0]
    elif bad == "dim":
        Y = Y[:, :-1]
    elif bad == "neg_grad":
        g[0] = -1.0
    with pytest.raises(SelectionError):
        compute_cost(X, Y, g, 0.5)


# ---------------------------------------------------------------- exact POO and incremental re-solve


@pytest.mark.parametrize("n,M,seed", [(3, 7, 0), (5, 5, 1), (6, 9, 2), (4, 11, 3)])
def test_poo_equals_lp(n, M, seed):
    rng = np.random.default_rng(seed)
    Cs = rng.random((n, M))
    val, u, v = poo(Cs)
    assert val == pytest.approx(_lp_ot(Cs), abs=1e-9)
    # duals: feasible and with the same objective (strong duality)
    assert (u[:, None] + v[None, :] <= Cs + 1e-9).all()
    assert u.mean() + v.mean() == pytest.approx(val, abs=1e-9)


@pytest.mark.parametrize("sparse_k", [0, 3])  # 0: dense searches; 3: sparse arcs + certificate + fallbacks
@pytest.mark.parametrize("N,M,n,seed", [(40, 13, 5, 0), (60, 30, 7, 1), (50, 20, 20, 2), (30, 9, 1, 4)])
def test_incremental_exchange_equals_cold_solve(N, M, n, seed, sparse_k):
    rng = np.random.default_rng(seed)
    C = rng.random((N, M)).astype(np.float32)
    rows = rng.choice(N, n, replace=False)
    es = ExchangeSolver(C, rows, sparse_k=sparse_k)
    assert es.value == pytest.approx(poo(C[rows])[0], abs=1e-12)
    for _ in range(25):
        slot = int(rng.integers(n))
        o = int(rng.choice(np.setdiff1d(np.arange(N), es.rows)))
        new = es.try_exchange(slot, o)
        assert es.rows[slot] == o
        assert new == pytest.approx(poo(C[es.rows])[0], abs=1e-9)
        # the maintained duals stay feasible and optimal
        Cs = C[es.rows].astype(np.float64)
        assert (es.u[:, None] + es.v[None, :] <= Cs + 1e-9).all()
        assert es.u.mean() + es.v.mean() == pytest.approx(new, abs=1e-9)
        if rng.random() < 0.5:
            es.commit()
        else:
            before = es.rows.copy()
            es.rollback()
            assert not np.array_equal(before, es.rows)
            assert es.value == pytest.approx(poo(C[es.rows])[0], abs=1e-9)


# ---------------------------------------------------------------- greedy


@pytest.mark.parametrize("levels,seed,n", [(None, 0, 10), (None, 1, 25), (4, 2, 10), (3, 3, 30)])
def test_lazy_greedy_equals_plain(levels, seed, n):
    rng = np.random.default_rng(seed)
    C = rng.random((150, 40)).astype(np.float32)
    if levels:  # many exact ties: checks that tie-breaking is identical too
        C = (np.floor(C * levels) / levels).astype(np.float32)
    r1, i1 = greedy_init(C, n, lazy=True)
    r2, i2 = greedy_init(C, n, lazy=False)
    np.testing.assert_array_equal(r1, r2)
    assert i1["greedy_picks"] == i2["greedy_picks"]
    assert i1["greedy_evals"] < i2["greedy_evals"] or i1["greedy_picks"] <= 2


def test_greedy_stopping_rule_drops_samples_serving_nobody():
    rng = np.random.default_rng(5)
    C = rng.random((200, 60)).astype(np.float32)
    rows, info = greedy_init(C, 15)
    assert len(rows) == 15 and len(np.unique(rows)) == 15 and info["greedy_flag"]
    # every kept sample is the nearest selected sample of at least one validation point
    served = np.unique(rows[np.argmin(C[rows], axis=0)])
    assert len(served) == 15
    assert info["greedy_picks"] == 15 + info["greedy_dropped"]
    # the first pick is the row of smallest row sum
    assert int(np.argmin(C.astype(np.float64).sum(1))) in rows or info["greedy_dropped"] > 0


def test_greedy_stops_at_n_when_few_nearest_neighbours():
    rng = np.random.default_rng(6)
    C = rng.random((100, 30)).astype(np.float32)
    C[7] = 0.0  # row 7 is the nearest neighbour of every validation point
    rows, info = greedy_init(C, 5)
    assert not info["greedy_flag"] and len(rows) == 5 and 7 in rows and info["greedy_dropped"] == 0


# ---------------------------------------------------------------- MI estimates (hand-computed)


def _tiny():
    # S = rows 0..2 with u = 0, so f = column minimum over S = 0 everywhere, unique minimisers
    # (slots 0,0,1,1,2,2) and second minimum 1. n = 3, M = 6, R = ceil(6/3) = 2.
    C = np.array([[0, 0, 1, 1, 1, 1],
                  [1, 1, 0, 0, 1, 1],
                  [1, 1, 1, 1, 0, 0],
                  [0.3, 0.1, 0.5, 0.2, 0.9, 0.6]], dtype=np.float32)
    return C, np.array([0, 1, 2]), np.zeros(3)


def test_mi_estimate_tight_by_hand():
    C, rows, u = _tiny()
    outer, inner = mi_scores(C, rows, u, "tight")
    # row 3: d = (.3,.1,.5,.2,.9,.6); y = 2nd smallest = .2; F = .2/3 + (.1-.2)/6 = 0.05
    assert outer[3] == pytest.approx(0.2 / 3 - 0.1 / 6, abs=1e-7)
    assert np.isinf(outer[:3]).all()
    # slot 0 leaves itself out: f = (1,1,0,0,0,0); d = (-1,-1,1,1,1,1); y = -1; F = -1/3
    np.testing.assert_allclose(inner, [-1 / 3] * 3, atol=1e-7)


def test_mi_estimate_reference_by_hand():
    C, rows, u = _tiny()
    outer, inner = mi_scores(C, rows, u, "reference")
    # y = 2nd LARGEST = .6; F = .6/3 + (-.3 -.5 -.1 -.4)/6
    assert outer[3] == pytest.approx(0.2 - 1.3 / 6, abs=1e-7)
    # quirk 2: f keeps slot 0 (f = 0), d = (0,0,1,1,1,1); y = 1; F = 1/3 + (-1 -1)/6 = 0
    np.testing.assert_allclose(inner, [0.0] * 3, atol=1e-7)


# ---------------------------------------------------------------- refinement


@pytest.mark.parametrize("mode", ["tight", "reference"])
def test_refine_strictly_decreases_and_matches_cold_solves(mode):
    X, Y, g = _clusters(120, 40, seed=3)
    C = compute_cost(X, Y, g, 0.5)
    rows, _ = greedy_init(C, 9)
    out, rep = refine(C, rows, max_iters=8, cut_num=6, mi_estimate=mode, verify=True)
    traj = np.array(rep["poo_trajectory"])
    assert (np.diff(traj) < 0).all()
    assert rep["max_verify_err"] <= 1e-9
    assert traj[-1] == pytest.approx(poo(C[out])[0], abs=1e-9)
    assert len(out) == 9 and len(np.unique(out)) == 9
    assert 0 <= rep["pass_at_1"] <= 1 and rep["exchanges_tried"] >= rep["accepted"]


def test_screening_does_not_change_the_result():
    X, Y, g = _clusters(100, 30, seed=4)
    C = compute_cost(X, Y, g, 0.2)
    rows, _ = greedy_init(C, 8)
    a, ra = refine(C, rows, max_iters=6, cut_num=5, screen=True)
    b, rb = refine(C, rows, max_iters=6, cut_num=5, screen=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ra["poo_trajectory"], rb["poo_trajectory"], atol=1e-12)
    assert rb["exchanges_screened"] == 0


def test_pair_lower_bound_is_valid():
    from goracs.selection.mi import _pair_bounds
    from goracs.selection.ot import ctransform
    rng = np.random.default_rng(9)
    C = rng.random((40, 17)).astype(np.float32)
    rows = np.arange(6)
    es = ExchangeSolver(C, rows)
    f1, f2, arg, cnt = ctransform(C, es.rows, es.u)
    outer = np.arange(6, 40)
    for slot in range(6):
        lbs = _pair_bounds(C, es.rows, es.u, f1, f2, arg, cnt, slot, outer, 3)
        for o, lb in zip(outer, lbs):
            r = es.rows.copy(); r[slot] = o
            assert lb <= poo(C[r])[0] + 1e-12


# ---------------------------------------------------------------- labels


def test_class_budgets_sum_and_shares():
    yv = np.array([0] * 70 + [1] * 20 + [2] * 10)
    b = class_budgets(yv, 64)
    assert sum(b.values()) == 64
    assert b[1] == round(64 * 0.2) and b[2] == round(64 * 0.1) and b[0] == 64 - b[1] - b[2]
    # binary, as the authors: n_pos = round(n * positive share), n_neg = the rest (0.375 * 4 = 1.5 -> 2)
    assert class_budgets(np.array([0] * 5 + [1] * 3), 4) == {0: 2, 1: 2}
    assert class_budgets(np.array([0] * 3 + [1] * 7), 5) == {0: 1, 1: 4}  # 3.5 -> 4 positives (half to even)
    assert class_budgets(np.array([0] * 79 + [1] * 21), 64) == {0: 64 - round(64 * 0.21), 1: round(64 * 0.21)}
    with pytest.raises(SelectionError):
        class_budgets(yv, 2)
    with pytest.raises(SelectionError):
        class_budgets(yv, 10, train_labels=np.array([0, 1] * 20))  # class 2 has no training sample


def test_label_enhanced_selector_follows_shares():
    X, Y, g = _clusters(150, 50, seed=7)
    rng = np.random.default_rng(7)
    yt = rng.integers(0, 3, size=150)
    yv = np.array([0] * 25 + [1] * 15 + [2] * 10)
    sig = Signals(embeddings=X, val_embeddings=Y, grad_norms=g, labels=yt, val_labels=yv)
    sel = GoracsSelector(lam=0.5, max_iters=3, cut_num=3, progress=False).select(sig, 20)
    assert len(sel.indices) == 20
    counts = np.bincount(yt[sel.indices], minlength=3)
    b = class_budgets(yv, 20)
    assert counts.tolist() == [b[0], b[1], b[2]]
    assert sel.report["label_enhanced"] is True


# ---------------------------------------------------------------- selector interface and bad input


def test_make_selector_builds_from_the_config_and_runs():
    from goracs.selection import make_selector
    X, Y, g = _clusters(80, 25, seed=8)
    sel = make_selector("goracs", lam=0.5, max_iters=4, cut_num=4, mi_estimate="tight", label_enhanced="auto",
                        device="cpu", progress=False)
    out = sel.select(Signals(embeddings=X, val_embeddings=Y, grad_norms=g), 10, seed=0)
    C = compute_cost(X, Y, g, 0.5)
    rows, rep = itra(C, 10, max_iters=4, cut_num=4)
    np.testing.assert_array_equal(out.indices, rows)
    assert out.report["poo_final"] == pytest.approx(poo(C[out.indices])[0], abs=1e-9)
    assert out.report["poo_final"] <= out.report["poo_greedy"]


def test_config_keys():
    import yaml
    from pathlib import Path
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs/selector/goracs.yaml").read_text())
    assert cfg["name"] == "goracs"
    assert cfg["_target_"] == "goracs.selection.goracs.GoracsSelector"
    rest = {k: v for k, v in cfg.items() if k not in ("name", "budget", "_target_")}
    assert set(rest) == {"lam", "max_iters", "cut_num", "mi_estimate", "label_enhanced", "device", "label_cost",
                         "cost_storage", "dense_max_gib"}
    # values may be interpolations resolved by Hydra from the task config; the literal ones must be accepted
    GoracsSelector(**{k: v for k, v in rest.items() if not (isinstance(v, str) and v.startswith("${"))})


def test_selector_bad_input():
    X, Y, g = _clusters(40, 10)
    sel = GoracsSelector(max_iters=2, cut_num=2, progress=False)
    with pytest.warns(UserWarning, match="whole pool"):
        assert len(sel.select(Signals(embeddings=X, val_embeddings=Y, grad_norms=g), 40).indices) == 40
    Xn = X.copy(); Xn[0, 0] = np.nan
    with pytest.raises(SelectionError):
        sel.select(Signals(embeddings=Xn, val_embeddings=Y, grad_norms=g), 5)
    with pytest.raises(SelectionError):
        sel.select(Signals(embeddings=X, val_embeddings=Y[:0], grad_norms=g), 5)
    with pytest.raises(SelectionError):
        sel.select(Signals(embeddings=X, val_embeddings=Y, grad_norms=g[:-3]), 5)
    with pytest.raises(SelectionError):
        GoracsSelector(mi_estimate="loose")
    with pytest.raises(SelectionError):
        GoracsSelector(cut_num=0)


@pytest.mark.parametrize("L", [128, 3])
def test_lazy_outer_ranking_equals_full_rescore(L):
    from goracs.selection.mi import _outer_scores
    from goracs.selection.outer import _LazyOuter
    from goracs.selection.ot import ceil_div, ctransform
    X, Y, g = _clusters(300, 60, seed=11)
    C = compute_cost(X, Y, g, 0.5)
    rows, _ = greedy_init(C, 12)
    es = ExchangeSolver(C, rows)
    R = ceil_div(60, 12)
    lazy = _LazyOuter(C, R, 12)
    lazy.L = L  # per-row bound exact on L columns (3: mostly the shift bound; 128 > M: exact everywhere)
    rng = np.random.default_rng(0)
    for _ in range(12):
        f1 = ctransform(C, es.rows, es.u)[0]
        in_s = np.zeros(300, bool)
        in_s[es.rows] = True
        full = np.argsort(_outer_scores(C, f1, R, 12, False, in_s), kind="stable")[:10]
        np.testing.assert_array_equal(lazy.top(f1, in_s, 10), full)
        es.try_exchange(int(rng.integers(12)), int(full[0]))
        es.commit()


def test_fused_tight_row_equals_reference_formula():
    from goracs.selection.mi import _mi_from_d, _mi_tight_row
    from goracs.selection.ot import ctransform
    rng = np.random.default_rng(12)
    C = rng.random((30, 23)).astype(np.float32)
    C[5, :7] = C[5, 0]  # ties among the smallest entries
    rows = np.arange(4)
    f1, f2, arg, cnt = ctransform(C, rows, rng.normal(size=4) * 0.1)
    dummy = np.zeros(1, np.int64)
    for R, n in [(1, 23), (3, 8), (6, 4), (23, 1)]:
        for o in range(30):
            d = C[o].astype(np.float64) - f1
            assert _mi_tight_row(C, o, f1, f1, dummy, dummy, -1, R, n) == pytest.approx(_mi_from_d(d, R, n, False),
                                                                                         abs=1e-14)
        for k in range(4):  # leave-one-out form against an explicit f without slot k
            fl = np.where((arg == k) & (cnt == 1), f2, f1)
            d = C[rows[k]].astype(np.float64) - fl
            got = _mi_tight_row(C, int(rows[k]), f1, f2, arg, cnt, k, R, n)
            assert got == pytest.approx(_mi_from_d(d, R, n, False), abs=1e-14)


def test_shift_slack_bounds_the_drop_of_every_outer_score():
    from goracs.selection.mi import _outer_scores
    from goracs.selection.outer import _shift_slack
    rng = np.random.default_rng(13)
    C = rng.random((200, 40)).astype(np.float32)
    skip = np.zeros(200, bool)
    n, R = 7, 6
    f = rng.normal(size=40) * 0.2
    F0 = _outer_scores(C, f, R, n, False, skip)
    for trial in range(20):
        # a common drift plus local moves, as the duals do between rounds
        f2 = f + rng.normal() + (rng.random(40) < 0.2) * rng.normal(size=40) * 0.3
        F1 = _outer_scores(C, f2, R, n, False, skip)
        slack = _shift_slack(f2 - f, n)
        assert (F1 >= F0 - slack - 1e-12).all()
        # and it is never looser than the plain bound mean_j max(f2 - f, 0)
        assert slack <= np.maximum(f2 - f, 0).mean() + 2e-12
    # a pure shift moves every score by exactly -3/n (y shifts with f): the bound is tight there
    assert _shift_slack(np.full(40, 3.0), n) == pytest.approx(3.0 / n, abs=1e-9)
    F3 = _outer_scores(C, f + 3.0, R, n, False, skip)
    np.testing.assert_allclose(F3, F0 - 3.0 / n, atol=1e-12)


def test_indexed_heap_pops_in_key_then_latest_update_order():
    from goracs.selection.ssp import _ih_pop, _ih_update
    rng = np.random.default_rng(14)
    V = 60
    hk, hs, hn = np.empty(V), np.empty(V, np.int64), np.empty(V, np.int64)
    pos = np.full(V, -1, np.int64)
    size, best, seq = 0, {}, 0
    for _ in range(400):  # inserts and decrease-keys, with many equal keys
        node = int(rng.integers(V))
        key = float(rng.integers(0, 6))
        if node not in best or key < best[node][0]:
            size = _ih_update(hk, hs, hn, pos, size, key, seq, node)
            best[node] = (key, seq)
        seq += 1
    assert size == len(best)
    # expected order: smaller key first, then the later update first (depth-first through ties)
    expect = sorted(best, key=lambda a: (best[a][0], -best[a][1]))
    got = []
    while size:
        key, node, size = _ih_pop(hk, hs, hn, pos, size)
        assert key == best[node][0] and pos[node] == -1
        got.append(node)
    assert got == expect


def test_flow_cost_from_lists_equals_full_scan():
    from goracs.selection.ssp import _flow_cost, _flow_cost_lists
    rng = np.random.default_rng(15)
    C = rng.random((50, 24)).astype(np.float32)
    es = ExchangeSolver(C, rng.choice(50, 5, replace=False))
    for step in range(20):
        es.try_exchange(int(rng.integers(5)), int(rng.choice(np.setdiff1d(np.arange(50), es.rows))))
        es.commit() if step % 3 else es.rollback()
        assert _flow_cost_lists(C, es.rows, es.X, es.slist, es.scnt) == _flow_cost(C, es.rows, es.X)
        # every list holds exactly the sources with flow into its sink (or is marked overflowed), and next to
        # each its arc cost, which the searches read instead of X and C
        for j in range(24):
            if es.scnt[j] >= 0:
                ks = es.slist[j, :es.scnt[j]]
                assert sorted(ks) == list(np.flatnonzero(es.X[j]))
                np.testing.assert_array_equal(es.scost[j, :es.scnt[j]], C[es.rows[ks], j].astype(np.float64))


def test_row_slack_bounds_the_drop_of_every_outer_score():
    # Block-structured dual moves (most columns drift together, a cluster of columns does not) are where the
    # row-independent shift bound is loose; the per-row bound must stay valid there and never be looser.
    from goracs.selection.mi import _tight_scores_y
    from goracs.selection.outer import _LazyOuter, _row_slack, _shift_slack
    rng = np.random.default_rng(14)
    N, M, n = 300, 60, 12
    R = -(-M // n)
    C = rng.random((N, M)).astype(np.float32)
    lazy = _LazyOuter(C, R, n)
    lazy.L = 8
    f0 = rng.normal(size=M) * 0.2
    in_s = np.zeros(N, bool)
    lazy._full(f0, in_s, 10)
    allrows = np.arange(N, dtype=np.int64)
    for trial in range(20):
        f = f0 - 0.4 + rng.normal(size=M) * 0.01
        blk = rng.choice(M, size=int(rng.integers(1, 12)), replace=False)
        f[blk] = f0[blk] + rng.normal(size=len(blk)) * 0.05  # a cluster the drift missed
        lazy.nf = 1
        sl, cb = _row_slack(C, allrows, lazy.ys, lazy.epoch, lazy.fs, f, *lazy._row_bound_setup(f), n,
                            np.full(N, -np.inf))  # no early exit: the smallest slack over the shifts
        F1, _ = _tight_scores_y(C, f, R, n, allrows)
        assert (F1 >= lazy.scores - sl).all()
        assert (sl <= _shift_slack(f - f0, n) + 1e-12).all()  # never looser than the shift bound
        # the re-based value is G(y + c; f) minus the margin, below the exact G at that y
        for o in range(0, N, 37):
            d = C[o].astype(np.float64) - f
            y = lazy.ys[o] + cb[o]
            G = y / n + np.minimum(d - y, 0).sum() / M
            assert lazy.scores[o] - sl[o] <= G + 1e-15


def test_fused_certificate_sweep_equals_separate_passes():
    # _certify_ctransform: a 4-rows-at-a-time c-transform sweep, the certificate read off f1 - v, and the rows
    # re-read on the violated columns only; same values, the same appended arcs as the row-wise certificate
    from goracs.selection.certify import _certify_ctransform, _min_reduced_cost
    from goracs.selection.ot import ctransform
    rng = np.random.default_rng(15)
    for N, M, rows in [(40, 23, np.array([3, 7, 11, 20, 31, 39])), (60, 97, np.arange(1, 60, 6))]:
        n = len(rows)
        C = rng.random((N, M)).astype(np.float32)
        C[rows[0], :5] = C[rows[1], :5] = 0.0  # ties in the column minima
        u = rng.normal(size=n) * 0.1
        u[1] = u[0]  # the first two slots tie on their shared columns
        for trial in range(4):
            v = np.min(C[rows] - u[:, None], axis=0) + (rng.normal(size=M) * 0.05 if trial else 0.0)
            if trial == 3:
                v[::3] = v[1::3].max() + 1.0  # many violated arcs per row, equal violations across columns
            lists = [(np.full((n, 3 * M), -1, np.int64), np.zeros(n, np.int64), np.zeros((n, 3 * M)))
                     for _ in range(2)]
            a = _min_reduced_cost(C, rows, u, v, 1e-12, *lists[0])
            f1, f2, arg = np.empty(M), np.empty(M), np.empty(M, np.int64)
            b = _certify_ctransform(C, rows, u, v, 1e-12, *lists[1], f1, f2, arg)
            assert abs(a - b) <= 1e-15 and (a < -1e-12) == (b < -1e-12)
            assert (b < -1e-12) == (trial > 0)
            for x, y in zip(lists[0], lists[1]):
                np.testing.assert_array_equal(x, y)
            g1, g2, ga, gc = ctransform(C, rows, u)
            np.testing.assert_array_equal(g1, f1)
            np.testing.assert_array_equal(g2, f2)
            np.testing.assert_array_equal(ga, arg)
            np.testing.assert_array_equal(gc == 1, f2 > f1)
            assert (gc > 1).any()


def test_inner_scores_equal_per_slot_leave_one_out():
    from goracs.selection.mi import _inner_scores, _mi_tight_row
    from goracs.selection.ot import ctransform
    rng = np.random.default_rng(16)
    C = rng.random((50, 31)).astype(np.float32)
    rows = np.arange(0, 50, 5)
    f1, f2, arg, cnt = ctransform(C, rows, rng.normal(size=10) * 0.1)
    R = 4
    got = _inner_scores(C, rows, f1, f2, arg, cnt, R, False, True)
    want = [_mi_tight_row(C, int(rows[k]), f1, f2, arg, cnt, k, R, 10) for k in range(10)]
    np.testing.assert_array_equal(got, want)


def test_exchange_searches_unchanged_by_the_tight_arc_stack():
    # The stack for zero-length relaxations must pop exactly what the indexed heap alone pops: same searches,
    # same settled nodes, same pushes as the heap-only kernel (numbers recorded with it, commit 32a08b9).
    rng = np.random.default_rng(21)
    cent = rng.normal(size=(6, 8))
    E = cent[rng.integers(0, 6, 400)] + 0.6 * rng.normal(size=(400, 8))
    V = cent[rng.integers(0, 6, 150)] + 0.6 * rng.normal(size=(150, 8))
    C = ((E[:, None, :] - V[None]) ** 2).sum(-1).astype(np.float32)
    C /= C.max()
    rows = rng.choice(400, 30, replace=False)
    es = ExchangeSolver(C, rows, sparse_k=16)
    for t in range(40):
        slot, o = int(rng.integers(30)), int(rng.integers(400))
        if o in es.rows:
            continue
        es.try_exchange(slot, o)
        if t % 3:
            es.commit()
        else:
            es.rollback()
    assert es.stats.tolist() == [359, 8358, 39969, 95935, 76, 0]
    assert es.value == pytest.approx(poo(C[es.rows])[0], abs=1e-12)


def test_kth_smallest_equals_partition():
    from goracs.selection.certify import _kth_smallest
    rng = np.random.default_rng(21)
    for M, K in [(50, 1), (50, 7), (300, 96), (97, 96), (1000, 333)]:
        for ties in (False, True):
            d = rng.random(M)
            if ties:
                d = np.round(d * 10) / 10  # many equal values around the threshold
            assert _kth_smallest(d, K, np.empty(K)) == np.partition(d, K - 1)[K - 1]
