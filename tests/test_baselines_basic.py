"""The first baselines: random (optionally stratified), GraNd, EL2N, k-center greedy."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from baselines.kcenter import KCenterSelector, k_center_greedy
from baselines.random import RandomSelector, pool_share_budgets
from goracs.selection.base import SelectionError, Signals
from goracs.selection.build import build_selector

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["random", "grand", "el2n", "kcenter"]


@pytest.fixture(scope="module")
def signals():
    rng = np.random.default_rng(0)
    n = 300
    return Signals(embeddings=rng.normal(size=(n, 8)).astype(np.float32),
                   val_embeddings=rng.normal(size=(50, 8)).astype(np.float32),
                   grad_norms=rng.gamma(2.0, size=n).astype(np.float32),
                   el2n=rng.uniform(size=n).astype(np.float32),
                   labels=(rng.uniform(size=n) < 0.3).astype(np.int64))


def build(name: str, **params):
    """A selector from its Hydra config file (configs/selector/<name>.yaml, its _target_ class), with overrides."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "selector" / f"{name}.yaml"), resolve=False)
    assert cfg["name"] == name and "budget" in cfg  # the budget is the pipeline's (per task), not a param
    cfg["budget"] = None  # (an interpolation of the task config, which this file alone does not have)
    got, _, sel = build_selector({**cfg, **params})
    assert got == name
    return sel


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("budget", [1, 17, 150])
def test_distinct_valid_and_deterministic(signals, name, budget):
    sel = build(name)
    a = sel.select(signals, budget, seed=3)
    b = build(name).select(signals, budget, seed=3)
    assert len(a.indices) == budget == len(np.unique(a.indices))
    assert a.indices.min() >= 0 and a.indices.max() < signals.n_train
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.report["selector"] == name and a.report["time_s"] >= 0


@pytest.mark.parametrize("name", ["random", "kcenter"])
def test_seed_matters_for_seeded_selectors(signals, name):
    a = build(name).select(signals, 40, seed=0).indices
    b = build(name).select(signals, 40, seed=1).indices
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name,field", [("grand", "grad_norms"), ("el2n", "el2n")])
def test_score_baselines_keep_the_top_n(signals, name, field):
    scores = getattr(signals, field)
    out = build(name).select(signals, 25, seed=0)
    assert set(out.indices) == set(np.argsort(-scores)[:25])
    assert scores[out.indices].min() >= np.sort(scores)[-25]
    np.testing.assert_array_equal(out.indices, build(name).select(signals, 25, seed=9).indices)


def test_top_n_breaks_ties_by_index():
    s = Signals(grad_norms=np.array([1.0, 2.0, 2.0, 0.5, 2.0]))
    assert list(build("grand").select(s, 2).indices) == [1, 2]


def test_score_baselines_need_their_signal(signals):
    with pytest.raises(SelectionError, match="'el2n'"):
        build("el2n").select(Signals(grad_norms=signals.grad_norms), 5)
    bad = Signals(grad_norms=np.array([1.0, np.nan, 2.0, 3.0]))
    with pytest.raises(SelectionError, match="non-finite"):
        build("grand").select(bad, 2)


def test_stratified_random_keeps_class_shares(signals):
    out = RandomSelector(stratify=True).select(signals, 100, seed=0)
    labels = signals.labels
    share = labels.mean()
    assert labels[out.indices].sum() == round(100 * share)  # class 1 budget, class 0 the remainder
    assert out.report["class_budgets"] == {0: 100 - round(100 * share), 1: round(100 * share)}
    with pytest.raises(SelectionError, match="'labels'"):
        RandomSelector(stratify=True).select(Signals(grad_norms=signals.grad_norms), 10)


def test_pool_share_budgets_move_overflow_to_other_classes():
    labels = np.array([0] * 95 + [1] * 5)
    assert pool_share_budgets(labels, 20) == {0: 19, 1: 1}
    # rounded shares (27.5 rounds to 28), the last class takes the remainder
    assert pool_share_budgets(np.array([0] * 3 + [1] * 30 + [2] * 3), 33) == {0: 3, 1: 28, 2: 2}
    rng = np.random.default_rng(0)
    for _ in range(200):
        labels = rng.integers(0, rng.integers(2, 5), size=rng.integers(5, 40))
        budget = int(rng.integers(1, len(labels) + 1))
        got = pool_share_budgets(labels, budget)
        counts = dict(zip(*np.unique(labels, return_counts=True)))
        assert sum(got.values()) == budget and all(0 <= got[c] <= counts[c] for c in got)


def _radius(x: np.ndarray, centres) -> float:
    d = np.linalg.norm(x[:, None, :] - x[list(centres)][None, :, :], axis=2)
    return float(d.min(axis=1).max())


@pytest.mark.parametrize("inst", range(6))
def test_kcenter_radius_within_twice_optimum(inst):
    rng = np.random.default_rng(100 + inst)
    n, k = 13, int(rng.integers(2, 5))
    x = rng.normal(size=(n, 3)) * rng.uniform(0.5, 3.0, size=3)
    opt = min(_radius(x, c) for c in itertools.combinations(range(n), k))
    sel = KCenterSelector(chunk=4).select(Signals(embeddings=x), k, seed=inst)
    got = _radius(x, sel.indices)
    assert got <= 2 * opt + 1e-9
    assert sel.report["covering_radius"] == pytest.approx(got, rel=1e-6)


def test_kcenter_picks_farthest_point_and_chunking_is_invisible():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 6))
    picks, radius = k_center_greedy(x, 20, first=7, chunk=64)
    assert picks[0] == 7 and len(set(picks)) == 20
    assert np.all(np.diff(radius) <= 1e-12)  # covering radius never grows
    d0 = np.linalg.norm(x - x[7], axis=1)
    assert picks[1] == int(np.argmax(d0))  # the second centre is the point farthest from the first
    np.testing.assert_array_equal(picks, k_center_greedy(x, 20, first=7, chunk=10**6)[0])


def test_kcenter_with_duplicate_points_still_returns_distinct_indices():
    x = np.repeat(np.eye(3), 4, axis=0)  # 12 points, 3 distinct
    sel = KCenterSelector().select(Signals(embeddings=x), 5, seed=0)
    assert len(np.unique(sel.indices)) == 5 and sel.report["zero_radius_fill"] == 2
    assert len({tuple(r) for r in x[sel.indices]}) == 3  # all three locations are covered


@pytest.mark.parametrize("field", ["grad_norms", "el2n"])
def test_stratified_score_baselines_take_the_top_of_each_class(signals, field):
    from baselines.el2n import EL2NSelector
    from baselines.grand import GraNdSelector

    cls = GraNdSelector if field == "grad_norms" else EL2NSelector
    scores, labels = getattr(signals, field), signals.labels
    out = cls(stratify=True).select(signals, 40, seed=0)
    budgets = pool_share_budgets(labels, 40)
    assert out.report["class_budgets"] == budgets
    for c, b in budgets.items():
        members = np.flatnonzero(labels == c)
        top = set(members[np.argsort(-scores[members], kind="stable")[:b]])
        assert set(out.indices[labels[out.indices] == c]) == top  # the class's own top b
    # a pool whose top scores are all one class: the plain selection keeps that class only, the stratified both
    skew = Signals(**{field: np.where(labels == 0, 10.0, 1.0) + scores}, labels=labels)
    assert set(labels[cls().select(skew, 40).indices]) == {0}
    assert set(labels[cls(stratify=True).select(skew, 40).indices]) == {0, 1}
    with pytest.raises(SelectionError, match="'labels'"):
        cls(stratify=True).select(Signals(**{field: scores}), 10)
    assert cls().needs == (field,) and cls(stratify=True).needs == (field, "labels")
