"""Parity of mi_estimate="reference" with the authors' ITRA decisions (the goracs-parity fixture), and the
pieces of the reference engine on synthetic instances."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from goracs.selection.cost import compute_cost
from goracs.selection.greedy import greedy_init
from goracs.selection.mi import mi_scores
from goracs.selection.ot import poo
from goracs.selection.reference import (cold_solve, greedy_reference, mi_scores_reference, prune_reference,
                                        refine_reference)
from goracs.selection.refine import itra
from tests.conftest import SHARED

PARITY = SHARED / "goracs-parity"


@pytest.fixture(scope="module")
def parity():
    if not (PARITY / "cost.npy").exists() or not (PARITY / "authors_decisions.json").exists():
        pytest.skip(f"parity fixture {PARITY} is absent")
    C = np.load(PARITY / "cost.npy")
    dec = json.loads((PARITY / "authors_decisions.json").read_text())
    return C, dec


@pytest.fixture(scope="module")
def reference_run(parity):
    C, dec = parity
    return itra(C, dec["n"], max_iters=dec["max_iters"], cut_num=dec["cut_num"], mi_estimate="reference",
                verify=True)


def _printed_pass_at_1(dec):
    lines = dec.get("pass_at_1_line") or []
    if isinstance(lines, str):
        lines = [lines]
    for line in lines:
        m = re.search(r"pass@1\s*:\s*([0-9.eE+-]+)", line)
        if m:
            return float(m.group(1))
    return None


# ---------------------------------------------------------------- the recorded run


def test_reference_greedy_gives_the_authors_pick_order(parity, reference_run):
    C, dec = parity
    _, rep = reference_run
    assert rep["greedy_order"] == dec["greedy_order"]
    assert rep["poo_greedy"] == pytest.approx(dec["poo_greedy"], abs=1e-9)


def test_reference_refinement_gives_the_authors_exchanges(parity, reference_run):
    C, dec = parity
    rows, rep = reference_run
    assert rows.tolist() == sorted(dec["refined"])
    traj, want = rep["poo_trajectory"], dec["poo_trajectory_printed"]
    assert len(traj) == len(want)
    np.testing.assert_allclose(traj, want, rtol=0, atol=1e-9)
    assert rep["accepted"] == len(want) - 1
    if rep["accepted"] < dec["max_iters"]:
        assert rep["refine_stop"] == "no_improving_pair"
    p1 = _printed_pass_at_1(dec)
    if p1 is not None:
        assert rep["pass_at_1"] == pytest.approx(p1, abs=1e-12)
    assert rep["max_verify_err"] <= 1e-9
    assert traj[-1] == pytest.approx(poo(C[rows])[0], abs=1e-9)


def test_reference_decisions_do_not_depend_on_the_shortcuts(parity, reference_run):
    """Deciding every pair by a cold ot.emd2 (their code) gives the same exchanges as the incremental
    rejections with screening."""
    C, dec = parity
    _, fast = reference_run
    rows, slow = refine_reference(C, dec["greedy_order"], max_iters=dec["max_iters"], cut_num=dec["cut_num"],
                                  cold_pairs=True)
    assert rows.tolist() == sorted(dec["refined"])
    assert slow["accepted_pairs"] == fast["accepted_pairs"]
    assert slow["poo_trajectory"] == fast["poo_trajectory"]
    assert slow["exchanges_tried"] == fast["exchanges_tried"] and slow["pass_at_1"] == fast["pass_at_1"]
    assert slow["cold_solves"] == slow["exchanges_tried"] + 1 and fast["cold_solves"] < slow["cold_solves"]


def test_tight_ends_below_the_authors_final_poo(parity):
    C, dec = parity
    rows, rep = itra(C, dec["n"], max_iters=dec["max_iters"], cut_num=dec["cut_num"], mi_estimate="tight")
    assert rep["poo_final"] < dec["poo_trajectory_printed"][-1]
    assert rep["poo_final"] == pytest.approx(poo(C[rows])[0], abs=1e-9)


# ---------------------------------------------------------------- synthetic instances


def _plain_torch_greedy(C, n):
    """The authors' greedy rule restated once more, whole-matrix and without incremental bookkeeping."""
    Ct = torch.from_numpy(C)
    S = [int(np.argmin(C.sum(axis=1)))]
    flag = len(torch.unique(Ct.argmin(dim=0))) > n
    while True:
        if len(S) >= n:
            serving = np.asarray(S)[torch.unique(Ct[S].argmin(dim=0)).numpy()]
            if len(serving) >= n or not flag:
                return [i for i in S if i in set(serving.tolist())] if flag else S
        m = Ct[S].min(dim=0).values
        gain = Ct.sum(dim=1) - (m - Ct).abs().sum(dim=1)
        rest = torch.from_numpy(np.setdiff1d(np.arange(len(C)), S))
        S.append(int(rest[gain[rest].argmin()]))


def _quantised(levels, seed):
    rng = np.random.default_rng(seed)
    C = rng.random((150, 40)).astype(np.float32)
    if levels:  # exact ties: tie-breaking and the serving bookkeeping must agree too
        C = (np.floor(C * levels) / levels).astype(np.float32)
    return C


@pytest.mark.parametrize("levels,seed,n,dropped", [(None, 0, 12, False), (None, 0, 20, True), (32, 0, 20, True),
                                                   (64, 1, 20, False), (4, 0, 10, False)])
def test_reference_greedy_equals_a_plain_torch_loop(levels, seed, n, dropped):
    C = _quantised(levels, seed)
    want = _plain_torch_greedy(C, n)
    for chunk in (None, 7):
        rows, info = greedy_reference(C, n, chunk_rows=chunk)
        assert rows.tolist() == want and info["greedy_status"] == "rule"
        assert info["greedy_picks"] == len(rows) + info["greedy_dropped"] and (info["greedy_dropped"] > 0) == dropped


@pytest.mark.parametrize("levels,seed,n", [(16, 0, 20), (4, 1, 10)])
def test_reference_greedy_stalls_on_tied_minima(levels, seed, n):
    """Tied column minima: fewer than n picks can ever serve a column (their code would run out of rows)."""
    C = _quantised(levels, seed)
    rows, info = greedy_reference(C, n)
    assert info["greedy_status"] == "stalled" and info["greedy_flag"]
    assert len(rows) == n and len(np.unique(rows)) == n
    assert np.array_equal(C[rows].min(axis=0), C.min(axis=0))
    order = info["greedy_order"]
    served = set(np.asarray(order)[np.argmin(C[order], axis=0)].tolist())
    k = len(served)
    assert k < n and set(order[:k]) == served  # the serving picks first, then the earliest others


def test_reference_greedy_stops_at_n_when_few_nearest_neighbours():
    rng = np.random.default_rng(6)
    C = rng.random((100, 30)).astype(np.float32)
    C[7] = 0.0
    rows, info = greedy_reference(C, 5)
    assert not info["greedy_flag"] and len(rows) == 5 and rows[0] == 7 and info["greedy_dropped"] == 0


def test_float32_estimate_is_the_float64_reference_formula():
    X, Y, g = _clusters(300, 70, seed=11)
    C = compute_cost(X, Y, g, 0.3)
    rows = greedy_init(C, 9)[0]
    _, u, _ = cold_solve(C, rows)
    F = mi_scores_reference(C, rows, u).numpy()
    F7 = mi_scores_reference(C, rows, u, chunk_rows=7).numpy()
    np.testing.assert_array_equal(F, F7)  # row chunks change nothing
    outer, inner = mi_scores(C, rows, u, "reference")
    out = np.setdiff1d(np.arange(len(C)), rows)
    np.testing.assert_allclose(F[out], outer[out], atol=2e-6)
    np.testing.assert_allclose(F[rows], inner, atol=2e-6)
    inn, outr = prune_reference(torch.from_numpy(F), rows, len(C), 4)
    assert len(inn) == 4 and set(inn) <= set(rows.tolist()) and np.all(np.diff(F[inn]) >= 0)
    assert len(outr) == 4 and not set(outr) & set(rows.tolist()) and np.all(np.diff(F[outr]) >= 0)
    assert F[outr[-1]] <= np.min(F[out][~np.isin(out, outr)])


def _clusters(N, M, d=8, seed=0):
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(5, d))
    X = cent[rng.integers(5, size=N)] + 0.5 * rng.normal(size=(N, d))
    Y = cent[rng.integers(5, size=M)] + 0.5 * rng.normal(size=(M, d))
    return X.astype(np.float32), Y.astype(np.float32), rng.gamma(5.0, 1.0, size=N)


@pytest.mark.parametrize("seed,N,M,n,lam", [(8, 300, 80, 15, 0.5), (4, 400, 100, 20, 0.1)])
def test_reference_shortcuts_match_cold_decisions(seed, N, M, n, lam):
    X, Y, g = _clusters(N, M, seed=seed)
    C = compute_cost(X, Y, g, lam)
    rows = greedy_reference(C, n)[0]
    runs = [refine_reference(C, rows, max_iters=12, cut_num=8, **kw)
            for kw in ({}, {"screen": False}, {"cold_pairs": True})]
    assert runs[0][1]["accepted"] >= 3 and runs[0][1]["exchanges_screened"] > 0
    for out, rep in runs[1:]:
        np.testing.assert_array_equal(out, runs[0][0])
        assert rep["accepted_pairs"] == runs[0][1]["accepted_pairs"]
        assert rep["poo_trajectory"] == runs[0][1]["poo_trajectory"]
    traj = runs[0][1]["poo_trajectory"]
    assert (np.diff(traj) < 0).all() and traj[-1] == pytest.approx(poo(C[runs[0][0]])[0], abs=1e-9)
    # the list order: each accepted exchange removes i and appends o
    order = list(rows)
    for i, o in runs[0][1]["accepted_pairs"]:
        order = [r for r in order if r != i] + [o]
    assert order == runs[0][1]["final_order"]
    assert math.isclose(cold_solve(C, order)[0], traj[-1], abs_tol=1e-15)


@pytest.mark.filterwarnings("ignore:numItermax reached")
def test_reference_falls_back_to_cold_decisions_at_the_iteration_cap(monkeypatch):
    """A cold solve stopped at the cap reports a value that is not the optimum (it can be below it): from then on
    every pair is decided by a cold solve, as in their code."""
    from goracs.selection import reference

    X, Y, g = _clusters(300, 80, seed=8)
    C = compute_cost(X, Y, g, 0.5)
    rows = greedy_reference(C, 15)[0]
    monkeypatch.setattr(reference, "COLD_MAX_ITER", 230)
    with pytest.warns(RuntimeWarning, match="iteration cap"):
        _, fast = refine_reference(C, rows, max_iters=12, cut_num=8)
    _, slow = refine_reference(C, rows, max_iters=12, cut_num=8, cold_pairs=True)
    assert fast["cold_not_converged"] > 0
    assert fast["accepted_pairs"] == slow["accepted_pairs"] and fast["poo_trajectory"] == slow["poo_trajectory"]
