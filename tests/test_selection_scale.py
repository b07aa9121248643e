"""Blocked cost storage (goracs.selection.scale): the same selection as the dense cost matrix, with only a pool of
candidate rows in memory; the check of the rows left out of the pool; the storage choice."""

from __future__ import annotations

import numpy as np
import pytest

from goracs.selection.base import SelectionError, Signals
from goracs.selection.cost import _CostPlan, compute_cost
from goracs.selection.goracs import GoracsSelector
from goracs.selection.greedy import greedy_init
from goracs.selection.mi import _tight_scores_y
from goracs.selection.refine import itra
from goracs.selection.scale import (_check_greedy, _check_outer, _exact_chunk, _Pool, _shift_slack,
                                    choose_storage, itra_blocked)


def _instance(N, M, d, seed, k=6, spread=0.6):
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(k, d))
    X = (cent[rng.integers(k, size=N)] + spread * rng.normal(size=(N, d))).astype(np.float32)
    Y = (cent[rng.integers(k, size=M)] + spread * rng.normal(size=(M, d))).astype(np.float32)
    g = rng.gamma(5.0, 1.0, size=N)
    return X, Y, g


def test_exact_chunks_are_the_dense_bits():
    X, Y, g = _instance(700, 90, 24, 0)
    for kw in ({}, {"scale_distances": False, "grad_max": 2 * g.max()}):
        C = compute_cost(X, Y, g, 0.3, chunk_rows=128, device="cpu", **kw)
        plan = _CostPlan(X, Y, g, 0.3, "cpu", 128, kw.get("scale_distances", True), kw.get("grad_max"))
        rmin, rmax = np.empty(700), np.empty(700)
        for s in plan.starts():
            d = plan.distances(s).double().numpy()
            rmin[s:s + len(d)], rmax[s:s + len(d)] = d.min(1), d.max(1)
        plan.set_range(rmin, rmax)
        for s in plan.starts():
            B = _exact_chunk(plan, s)
            assert np.array_equal(B, C[s:s + len(B)])  # bit for bit, chunk by chunk


def test_pool_is_the_union_of_column_top_r():
    rng = np.random.default_rng(3)
    C = rng.random((500, 40)).astype(np.float32)
    pool = _Pool(500, 40, 3)
    for s in range(0, 500, 64):
        pool.add(C[s:s + 64], s)
    want = np.unique(np.argsort(C, axis=0, kind="stable")[:3])
    assert np.array_equal(np.array(sorted(pool.rows)), want)
    for k, row in pool.rows.items():
        assert np.array_equal(row, C[k])


# (N, M, d, n, lam, per_column, chunk_rows, clusters): small pools force rows in through the check
CASES = [
    (3000, 200, 16, 20, 0.1, 2, 256, 6),
    (2000, 300, 8, 30, 0.0, 1, 100, 6),
    (4000, 150, 32, 15, 0.5, 3, 512, 6),
    (2500, 120, 12, 12, 0.2, 40, 300, 3),
    (1500, 64, 6, 25, 1.0, 1, 97, 1),
]


@pytest.mark.parametrize("case", CASES)
def test_blocked_equals_dense(case):
    N, M, d, n, lam, pc, ch, k = case
    X, Y, g = _instance(N, M, d, seed=N + M, k=k)
    C = compute_cost(X, Y, g, lam, chunk_rows=ch, device="cpu")
    a, ra = itra(C, n, max_iters=15, cut_num=6)
    b, rb = itra_blocked(X, Y, g, lam, n, chunk_rows=ch, device="cpu", per_column=pc, max_iters=15, cut_num=6)
    assert np.array_equal(a, b)
    assert rb["poo_trajectory"] == ra["poo_trajectory"]
    assert rb["accepted"] == ra["accepted"] and rb["greedy_picks"] == ra["greedy_picks"]
    assert rb["blocked"]["pool_rows"] < N


def test_check_adds_the_rows_the_pool_missed():
    # one row per column in the pool misses greedy picks or outer candidates; the check must bring them in,
    # and the answer must still be the dense one
    X, Y, g = _instance(2000, 300, 8, seed=2300, k=6)
    C = compute_cost(X, Y, g, 0.0, chunk_rows=100, device="cpu")
    a, _ = itra(C, 30, max_iters=15, cut_num=6)
    b, rb = itra_blocked(X, Y, g, 0.0, 30, chunk_rows=100, device="cpu", per_column=1, max_iters=15, cut_num=6)
    assert rb["blocked"]["rows_added"] > 0 and rb["blocked"]["check_rounds"] >= 2
    assert np.array_equal(a, b)
    # with a generous pool nothing is missing: one round, nothing added
    c, rc = itra_blocked(X, Y, g, 0.0, 30, chunk_rows=100, device="cpu", per_column=60, max_iters=15, cut_num=6)
    assert rc["blocked"]["rows_added"] == 0 and rc["blocked"]["check_rounds"] == 1
    assert np.array_equal(a, c)


def test_greedy_check_exact_ties_and_monotone_skip():
    M = 6
    cur1 = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], np.float32)
    curs = np.stack([np.full(M, np.inf, np.float32), cur1, cur1])
    gains = np.array([np.nan, 0.3, 0.3])  # step 1 picked row 10 with gain 0.3; step 2 row 12 with 0.3
    gpick = np.array([5, 10, 12])
    smin = np.array([0.3, 0.3, 0.3])
    # gain exactly 0.3 (0.5 - 0.2): a tie with the pick, decided by index
    B = np.array([[0.2, 0.5, 0.5, 0.5, 0.5, 0.5]] * 3, np.float32)
    g_exact = float(cur1[0] - B[0, 0])  # greedy._gain's arithmetic (numba's float() keeps float32 operands)
    gains = np.array([np.nan, g_exact, g_exact])
    fail = np.zeros(3, np.bool_)
    ev = np.zeros(1, np.int64)
    _check_greedy(B, np.array([9, 11, 13]), curs, gains, gpick, np.minimum.accumulate(gains[::-1])[::-1], fail, ev)
    # row 9 < 10 ties step 1: picked instead -> fails; row 11 > 10 but < 12 at step 2 -> fails; row 13: never
    assert fail.tolist() == [True, True, False]
    # a gain below every later pick gain is cleared after one evaluation
    B2 = np.array([[0.45, 0.5, 0.5, 0.5, 0.5, 0.5]], np.float32)
    fail = np.zeros(1, np.bool_)
    ev[:] = 0
    _check_greedy(B2, np.array([0]), curs, gains, gpick, np.minimum.accumulate(gains[::-1])[::-1], fail, ev)
    assert not fail[0] and ev[0] == 1
    # a stall (pick -1): any positive gain changes the outcome, a zero gain does not
    gains_st = np.array([np.nan, 0.0])
    for row, want in ((B2, True), (np.full((1, M), 0.5, np.float32), False)):
        fail = np.zeros(1, np.bool_)
        _check_greedy(row, np.array([0]), curs[:2], gains_st, np.array([5, -1]), np.zeros(2), fail, ev)
        assert fail[0] == want


def test_outer_check_ties_and_slack():
    rng = np.random.default_rng(5)
    M, n, R = 40, 8, 5
    B = rng.random((4, M)).astype(np.float32)
    f0 = rng.random(M) * 0.1
    F = np.stack([f0, f0 + 0.05])  # a common shift: scores move by exactly -0.05/n, the slack absorbs it
    sc0 = _tight_scores_y(B, f0, R, n, np.arange(4))[0]
    sc1 = _tight_scores_y(B, F[1], R, n, np.arange(4))[0]
    slack = np.full((2, 2), np.inf)
    slack[0, 0] = slack[1, 1] = _shift_slack(np.zeros(M), n)
    slack[0, 1] = _shift_slack(F[1] - F[0], n)
    assert sc0[0] - slack[0, 1] <= sc1[0] + 1e-12  # a valid lower bound
    # round 0 threshold = row 2's own score with index 50: rows with a smaller index tie in, larger do not
    tau = np.array([sc0[2], -np.inf])
    for gid, want in ((49, True), (51, False)):
        fail = np.zeros(4, np.bool_)
        ev = np.zeros(1, np.int64)
        _check_outer(B, np.array([gid] * 4), F, tau, np.array([50, 0]), slack, R, n, fail, ev)
        assert fail[2] == want
        assert fail[[0, 1, 3]].tolist() == [bool(sc0[i] < sc0[2] or (sc0[i] == sc0[2] and gid < 50)) for i in (0, 1, 3)]
    # at round 1 the threshold is the lowest score: every row must fail there and nowhere before
    tau = np.array([-np.inf, sc1.max() + 1e-9])
    fail = np.zeros(4, np.bool_)
    _check_outer(B, np.arange(4), F, tau, np.array([0, 0]), slack, R, n, fail, ev)
    assert fail.all()


def test_selector_blocked_equals_dense_with_and_without_labels():
    X, Y, g = _instance(1800, 160, 10, seed=11)
    rng = np.random.default_rng(1)
    yt = rng.integers(0, 2, size=len(X))
    yv = rng.integers(0, 2, size=len(Y))
    for labels in (None, (yt, yv)):
        sig = Signals(embeddings=X, val_embeddings=Y, grad_norms=g,
                      labels=None if labels is None else labels[0], val_labels=None if labels is None else labels[1])
        for lam in (0.0, 0.4):
            for label_cost in ("authors", "block"):
                kw = dict(lam=lam, max_iters=10, cut_num=5, device="cpu", progress=False, chunk_rows=128,
                          label_cost=label_cost)
                a = GoracsSelector(cost_storage="dense", **kw).select(sig, budget=24, seed=0)
                b = GoracsSelector(cost_storage="blocked", **kw).select(sig, budget=24, seed=0)
                assert np.array_equal(a.indices, b.indices)
                if labels is None:
                    assert a.report["cost_storage"] == "dense" and b.report["cost_storage"] == "blocked"
                    break  # label_cost only matters with labels
                else:
                    assert {r["cost_storage"] for r in b.report["per_class"].values()} == {"blocked"}


def test_storage_choice_and_settings():
    assert choose_storage("auto", 139_796, 5000, 8.0) == "dense"  # 2.6 GiB
    assert choose_storage("auto", 1_000_000, 5000, 8.0) == "blocked"  # 18.6 GiB
    assert choose_storage("dense", 10**7, 5000, 8.0) == "dense"
    assert choose_storage("blocked", 10, 5, 8.0) == "blocked"
    with pytest.raises(SelectionError, match="cost_storage"):
        choose_storage("sparse", 10, 5, 8.0)
    with pytest.raises(SelectionError, match="cost_storage"):
        GoracsSelector(cost_storage="float16")
    with pytest.raises(SelectionError, match="mi_estimate=tight"):
        GoracsSelector(cost_storage="blocked", mi_estimate="reference")
    with pytest.raises(SelectionError, match="dense_max_gib"):
        GoracsSelector(dense_max_gib=0)
    # auto picks dense below the threshold and blocked above it, with the same answer
    X, Y, g = _instance(900, 50, 6, seed=4)
    sig = Signals(embeddings=X, val_embeddings=Y, grad_norms=g)
    kw = dict(lam=0.1, max_iters=8, cut_num=4, device="cpu", progress=False, chunk_rows=64)
    a = GoracsSelector(**kw).select(sig, budget=15, seed=0)
    b = GoracsSelector(dense_max_gib=900 * 50 * 4 / 2**30 / 2, **kw).select(sig, budget=15, seed=0)
    assert a.report["cost_storage"] == "dense" and b.report["cost_storage"] == "blocked"
    assert np.array_equal(a.indices, b.indices)


def test_greedy_on_a_subset_with_the_pools_first_and_flag():
    # every full-pool pick is the argmax over any subset that holds it, so greedy_init on a subset holding all
    # picks, given the whole pool's first pick and flag, picks the same rows (pick gains traced)
    X, Y, g = _instance(1200, 80, 8, seed=8)
    C = compute_cost(X, Y, g, 0.2, device="cpu")
    tr = {}
    rows, info = greedy_init(C, 10, trace=tr)
    keep = np.unique(np.concatenate([tr["picks"], np.arange(0, 1200, 7)]))
    tr2 = {}
    sub_rows, _ = greedy_init(np.ascontiguousarray(C[keep]), 10, first=int(np.searchsorted(keep, tr["picks"][0])),
                              flag=info["greedy_flag"], trace=tr2)
    assert np.array_equal(keep[sub_rows], rows)
    assert np.array_equal(keep[tr2["picks"]], tr["picks"])
    assert np.isnan(tr["gains"][0]) and (tr["gains"][1:] > 0).all()
    assert np.array_equal(tr["gains"][1:], tr2["gains"][1:])
