"""The paper's remaining baselines (method.md 7): CCS, D2-Pruning, Moderate, DEALRec. Each: n distinct valid
indices, determinism per seed, and one property of its definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from baselines.ccs import CCSSelector, allocate, strata_of
from baselines.d2pruning import (D2PruningSelector, forward_pass, greedy_reverse, knn_exact, knn_ivf,
                                 symmetric_graph)
from baselines.moderate import ModerateSelector
from goracs.selection.base import SelectionError, Signals
from goracs.selection.build import make_selector


def _signals(n=600, d=8, seed=0, labels=False):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, d)) * 4
    x = centres[rng.integers(5, size=n)] + rng.normal(size=(n, d))
    g = rng.gamma(2.0, 1.0, size=n)
    return Signals(embeddings=x.astype(np.float32), grad_norms=g, el2n=rng.uniform(size=n),
                   labels=rng.integers(2, size=n) if labels else None)


def _check_valid(sel, sig, budget):
    idx = sel.select(sig, budget, seed=3).indices
    assert len(idx) == budget and len(np.unique(idx)) == budget
    assert idx.min() >= 0 and idx.max() < sig.n_train
    np.testing.assert_array_equal(idx, sel.select(sig, budget, seed=3).indices)  # deterministic per seed
    return idx


@pytest.mark.parametrize("name,cls", [("ccs", CCSSelector), ("d2pruning", D2PruningSelector),
                                      ("moderate", ModerateSelector)])
def test_built_from_config(name, cls):
    sel = make_selector(name)  # configs/selector/<name>.yaml names the class
    assert type(sel) is cls and sel.name == name


# ---------------------------------------------------------------------------------------------------- CCS

def test_ccs_valid_and_seeded():
    sig = _signals()
    idx = _check_valid(CCSSelector(beta=0.1, k=10), sig, 60)
    other = CCSSelector(beta=0.1, k=10).select(sig, 60, seed=4).indices
    assert not np.array_equal(idx, other)  # the seed drives the within-stratum draws


def test_ccs_allocation_rule():
    # smallest first: sizes 2, 3 fully taken; the remaining 25 split floor(25/2)=12 then 13
    np.testing.assert_array_equal(allocate(np.array([50, 2, 0, 3, 40]), 30), [13, 2, 0, 3, 12])


@pytest.mark.parametrize("score", ["grad_norms", "el2n"])
def test_ccs_prunes_hardest_and_spreads_over_strata(score):
    sig = _signals(n=1000, seed=1)
    beta, k, budget = 0.2, 8, 80
    s = np.asarray(getattr(sig, score))
    out = CCSSelector(score=score, beta=beta, k=k).select(sig, budget, seed=0)
    idx = out.indices
    hardest = np.argsort(-s, kind="stable")[: int(beta * len(s))]
    assert not np.intersect1d(idx, hardest).size  # the hardest beta fraction is never picked
    keep = np.setdiff1d(np.arange(len(s)), hardest)
    strata = strata_of(s[keep], k)
    sizes = np.bincount(strata, minlength=k)
    got = np.bincount(strata[np.searchsorted(keep, idx)], minlength=k)
    np.testing.assert_array_equal(got, allocate(sizes, budget))
    np.testing.assert_array_equal(got, out.report["strata_budget"])
    assert (got > 0).sum() == (sizes > 0).sum()  # every non-empty stratum is covered at this budget


def test_ccs_bad_params():
    with pytest.raises(ValueError, match="beta"):
        CCSSelector(beta=1.0)
    with pytest.raises(ValueError, match="score"):
        CCSSelector(score="loss")
    with pytest.raises(ValueError, match="k"):
        CCSSelector(k=0)
    with pytest.raises(SelectionError, match="el2n"):
        CCSSelector(score="el2n").select(Signals(grad_norms=np.ones(10)), 3)
    with pytest.raises(SelectionError, match="beta"):
        CCSSelector(beta=0.9).select(_signals(n=100), 50)


# ---------------------------------------------------------------------------------------------- Moderate

def test_moderate_valid_and_straddles_median():
    sig = _signals(n=501, seed=2)
    idx = _check_valid(ModerateSelector(), sig, 51)
    x = sig.embeddings.astype(np.float64)
    d = np.linalg.norm(x - np.median(x, axis=0), axis=1)
    med = np.median(d)
    sel = d[idx]
    assert sel.min() < med < sel.max() or np.isclose(sel, med).any()
    # exactly as many kept below as above the median (odd pool, odd budget: the median sample itself is kept)
    assert (sel < med).sum() == (sel > med).sum() == 25
    # the kept samples are the closest to the median in rank: no unselected sample lies inside their range
    rest = np.setdiff1d(np.arange(len(d)), idx)
    assert not ((d[rest] > sel.min()) & (d[rest] < sel.max())).any()


def test_moderate_per_class_budgets():
    sig = _signals(n=400, seed=3, labels=True)
    idx = ModerateSelector().select(sig, 40, seed=0).indices
    shares = np.bincount(sig.labels[idx], minlength=2)
    want0 = round(40 * (sig.labels == 0).mean())
    assert shares[0] == want0 and shares[1] == 40 - want0
    x = sig.embeddings.astype(np.float64)
    for c in (0, 1):  # each class straddles its own median distance to its own prototype
        m = sig.labels == c
        d = np.linalg.norm(x[m] - np.median(x[m], axis=0), axis=1)
        dsel = np.linalg.norm(x[idx[sig.labels[idx] == c]] - np.median(x[m], axis=0), axis=1)
        assert dsel.min() <= np.median(d) <= dsel.max()


# --------------------------------------------------------------------------------------------- D2-Pruning

def test_knn_exact_matches_brute_force_and_ivf_recall():
    x = _signals(n=700, d=6, seed=4).embeddings
    nbr, dist = knn_exact(x, 5, chunk=128)
    full = ((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.fill_diagonal(full, np.inf)
    ref = np.argsort(full, axis=1)[:, :5]
    np.testing.assert_allclose(np.sort(dist, 1), np.sort(full, 1)[:, :5], rtol=1e-3, atol=1e-3)
    assert (nbr == np.arange(len(x))[:, None]).sum() == 0
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(nbr, ref)]) > 0.99
    approx, _ = knn_ivf(x, 5, n_lists=20, n_probe=5, seed=0, chunk=64)
    assert (approx == np.arange(len(x))[:, None]).sum() == 0
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(approx, ref)])
    assert recall > 0.9, recall


def test_d2_reverse_pass_downweights_neighbours():
    x = _signals(n=200, d=4, seed=5).embeddings
    nbr, dist = knn_exact(x, 4)
    indptr, indices, d2 = symmetric_graph(nbr, dist)
    s = np.random.default_rng(0).uniform(1, 2, size=len(x))
    fwd = forward_pass(s, indptr, indices, d2, 0.5)
    i0 = int(np.argmax(fwd))
    picks = greedy_reverse(fwd, indptr, indices, d2, 0.7, 1)
    assert picks[0] == i0
    # one pick: rerun the greedy by hand for the second step to read the updated scores
    nb = indices[indptr[i0]:indptr[i0 + 1]]
    expect = fwd.copy()
    expect[nb] -= np.exp(-0.7 * d2[indptr[i0]:indptr[i0 + 1]]) * fwd[i0]
    expect[i0] = -np.inf
    two = greedy_reverse(fwd, indptr, indices, d2, 0.7, 2)
    assert two[1] == int(np.argmax(expect))
    assert (expect[nb] < fwd[nb]).all()  # every neighbour of the pick lost score
    # forward pass: a node's new score is its own plus RBF-weighted neighbour scores
    j = 7
    nj = indices[indptr[j]:indptr[j + 1]]
    assert np.isclose(fwd[j], s[j] + (np.exp(-0.5 * d2[indptr[j]:indptr[j + 1]]) * s[nj]).sum())
    assert set(nbr[j]) <= set(nj)  # symmetrised graph contains the kNN edges


def test_d2_spreads_picks_over_clusters():
    # two tight clusters of 30 whose kNN graphs (k = 29) are the clusters themselves; A slightly harder.
    # Top-n would take two from A; after the first pick in A, D2's reverse pass empties A's scores, so the
    # second pick must come from B.
    rng = np.random.default_rng(6)
    a = rng.normal(0, 0.01, size=(30, 5)) + 5.0
    b = rng.normal(0, 0.01, size=(30, 5)) - 5.0
    x = np.vstack([a, b]).astype(np.float32)
    g = np.r_[np.full(30, 1.0), np.full(30, 0.9)] + rng.uniform(0, 0.01, size=60)
    sig = Signals(embeddings=x, grad_norms=g)
    idx = _check_valid(D2PruningSelector(k=29, gamma_f=1.0, gamma_r=1.0, normalize=False), sig, 2)
    assert (idx < 30).sum() == 1 and (idx >= 30).sum() == 1
    # with no reverse down-weighting (gamma_r huge -> weights 0 on non-duplicate neighbours) picks stay in A
    idx0 = D2PruningSelector(k=29, gamma_r=1e9, normalize=False).select(sig, 2).indices
    assert (idx0 < 30).all()


def test_d2_ivf_path_and_bad_params():
    sig = _signals(n=900, d=8, seed=7)
    sel = D2PruningSelector(k=5, knn="ivf", n_lists=15, n_probe=4, beta=0.1)
    idx = _check_valid(sel, sig, 50)
    hardest = np.argsort(-sig.grad_norms, kind="stable")[:90]
    assert not np.intersect1d(idx, hardest).size
    with pytest.raises(ValueError, match="knn"):
        D2PruningSelector(knn="hnsw")
    with pytest.raises(ValueError, match="gamma_r"):
        D2PruningSelector(gamma_r=-1)
    with pytest.raises(ValueError, match="k"):
        D2PruningSelector(k=0)


# ------------------------------------------------------------------------------------------------ DEALRec

def _seqrec(n, n_items, seed):
    rng = np.random.default_rng(seed)
    hist = [list(rng.integers(n_items, size=rng.integers(0, 4))) for _ in range(n)]
    # a learnable pattern (next item = last + 1) with noise, so the surrogate fits something real
    targets = np.array([(h[-1] + 1) % n_items if h and rng.uniform() < 0.7 else rng.integers(n_items)
                        for h in hist])
    return hist, targets


def test_dealrec_valid_seeded_and_built_from_config():
    from baselines.dealrec import DEALRecSelector
    assert type(make_selector("dealrec")) is DEALRecSelector
    hist, targets = _seqrec(300, 15, 0)
    sig = _signals(n=300, seed=8)
    sig.extra = {"histories": hist, "targets": targets, "n_items": 15}
    sel = DEALRecSelector(hidden=8, n_blocks=1, n_heads=2, dropout=0.1, epochs=2, batch_size=64, k=10,
                          refit_iters=20, cg_iters=20)
    idx = _check_valid(sel, sig, 30)
    out = sel.select(sig, 30, seed=3)
    assert out.report["n_pruned"] == 30 and sum(out.report["strata_budget"]) == 30
    assert not np.array_equal(idx, sel.select(sig, 30, seed=4).indices)


def test_dealrec_influence_matches_leave_one_out():
    # tiny surrogate; then the convex head is refitted without each sample in turn (brute-force LOO) and the
    # change of the mean training loss compared with the influence estimate
    import torch

    from baselines.dealrec import fit_head, head_loss_grad, influence_scores, pad_histories, train_surrogate
    n, n_items, reg = 50, 8, 0.01
    hist, targets = _seqrec(n, n_items, 1)
    seqs = pad_histories(hist, 3)
    model = train_surrogate(seqs, targets, n_items, hidden=4, n_blocks=1, n_heads=1, dropout=0.0, epochs=30,
                            lr=1e-2, batch_size=16, seed=0)
    with torch.no_grad():
        F = model.features(torch.from_numpy(seqs)).double()
        E = model.item_matrix().detach().double()
    y = torch.from_numpy(targets)
    W = fit_head(model.head.weight.detach().double(), F, E, y, reg, iters=300, tol=1e-12)
    infl, rep = influence_scores(W, F, E, y, reg)
    ones = torch.ones(n, dtype=torch.float64)
    r0, _ = head_loss_grad(W, F, E, y, ones)
    loo = np.empty(n)
    for s in range(n):
        w = ones.clone()
        w[s] = 0.0
        ws = fit_head(W, F, E, y, reg, weights=w, iters=300, tol=1e-12)
        loo[s] = head_loss_grad(ws, F, E, y, ones)[0] - r0
    rho = spearmanr(infl, loo).statistic
    assert rho > 0.5, rho
    assert np.std(loo) > 1e-6  # the LOO effects are real, not numerical noise


def test_dealrec_input_errors():
    from baselines.dealrec import DEALRecSelector
    sig = _signals(n=50, seed=9)
    with pytest.raises(SelectionError, match="histories"):
        DEALRecSelector().select(sig, 5)
    hist, targets = _seqrec(50, 6, 2)
    sig.extra = {"histories": hist, "targets": targets, "n_items": 5}
    with pytest.raises(SelectionError, match="n_items"):
        DEALRecSelector().select(sig, 5)
    with pytest.raises(ValueError, match="hard_prune"):
        DEALRecSelector(hard_prune=-0.1)
    with pytest.raises(ValueError, match="reg"):
        DEALRecSelector(reg=0)
    with pytest.raises(ValueError, match="n_heads"):
        DEALRecSelector(hidden=10, n_heads=3)
    with pytest.raises(ValueError, match="chunk must be a positive integer or 'auto'"):
        DEALRecSelector(chunk="big")


def test_dealrec_blocks_are_small_and_do_not_change_the_passes():
    # 'auto' keeps a logits block near 8 MB (large blocks page-fault on every pass); any block size gives the
    # same loss, gradient and Hessian-vector product
    import torch

    from baselines.dealrec import block_rows, head_hvp, head_loss_grad
    assert block_rows("auto", 16_804) * 16_804 * 4 <= 8 * 2 ** 20 and block_rows("auto", 16_804) >= 100
    assert block_rows("auto", 3) > 10_000 and block_rows(7, 16_804) == 7
    g = torch.Generator().manual_seed(0)
    F, E = torch.randn(300, 6, generator=g, dtype=torch.float64), torch.randn(40, 6, generator=g, dtype=torch.float64)
    W, y, w = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randint(40, (300,), generator=g), \
        torch.rand(300, generator=g, dtype=torch.float64)
    ref = head_loss_grad(W, F, E, y, w, chunk=300)
    for rows in (1, 17, block_rows("auto", 40)):
        loss, grad = head_loss_grad(W, F, E, y, w, chunk=rows)
        assert np.isclose(loss, ref[0], rtol=1e-12) and torch.allclose(grad, ref[1], rtol=1e-10)
        assert torch.allclose(head_hvp(grad, W, F, E, 0.01, chunk=rows), head_hvp(grad, W, F, E, 0.01, chunk=300),
                              rtol=1e-10)
