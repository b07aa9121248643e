"""Ranking metrics (HR@k, NDCG@k with one relevant item) and CTR metrics (AUC, log-loss)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


class MetricError(ValueError):
    """Inputs that would give a silently wrong metric (shapes, ranges, labels)."""


def rank_of_target(distances: np.ndarray, target_index: int | Sequence[int]) -> np.ndarray:
    """0-based rank of the target among candidates by ascending distance; ties count against the target.

    `distances` is (n_candidates,) or (n_samples, n_candidates); `target_index` the target's column.
    A candidate at exactly the target's distance is ranked ahead of it (pessimistic), so a degenerate
    scorer that gives every candidate the same distance earns no hit.
    """
    d = np.asarray(distances, dtype=np.float64)
    single = d.ndim == 1
    d = np.atleast_2d(d)
    t = np.broadcast_to(np.asarray(target_index, dtype=np.int64), (d.shape[0],))
    if np.any(t < 0) or np.any(t >= d.shape[1]):
        raise MetricError(f"target index out of range for {d.shape[1]} candidates")
    if np.isnan(d).any():
        raise MetricError("distances contain NaN")
    dt = d[np.arange(d.shape[0]), t][:, None]
    ahead = (d <= dt).sum(axis=1) - 1  # every candidate not farther than the target, except the target itself
    return ahead[0] if single else ahead


def hr_ndcg(ranks: Iterable[int], ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """HR@k and NDCG@k for one relevant item per sample, from its 0-based rank."""
    r = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks)
    if r.size == 0:
        raise MetricError("hr_ndcg: no ranks given (empty test set)")
    if not np.issubdtype(r.dtype, np.integer):
        if not np.all(np.equal(np.mod(r, 1), 0)):
            raise MetricError("hr_ndcg: ranks must be integers (0-based)")
        r = r.astype(np.int64)
    if (r < 0).any():
        raise MetricError("hr_ndcg: ranks must be >= 0 (0 = the target is first)")
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean())
    return out


def auc_logloss(labels: Sequence[int], p_yes: Sequence[float], eps: float = 1e-7) -> dict[str, float]:
    """ROC AUC and binary log-loss of P(Yes) (scikit-learn); AUC is NaN, with a warning, for one class only."""
    from sklearn.metrics import log_loss, roc_auc_score

    y = np.asarray(labels)
    p = np.asarray(p_yes, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise MetricError(f"labels {y.shape} and probabilities {p.shape} must be equal-length 1-d arrays")
    if y.size == 0:
        raise MetricError("auc_logloss: empty test set")
    if not np.isin(y, (0, 1)).all():
        raise MetricError(f"labels must be 0/1, got values {sorted(set(y.tolist()))[:5]}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise MetricError("probabilities must be finite and in [0, 1]")
    p = np.clip(p, eps, 1 - eps)
    if len(np.unique(y)) < 2:
        warnings.warn("only one class in the labels: AUC is undefined (NaN)", stacklevel=2)
        auc = math.nan
    else:
        auc = float(roc_auc_score(y, p))
    return {"auc": auc, "logloss": float(log_loss(y, p, labels=[0, 1]))}


# --------------------------------------------------------------------------------------- metrics chosen by config
@dataclass(frozen=True)
class Metric:
    """A reported metric: its key in metrics.json (lower case), its table label and its direction."""

    name: str
    label: str
    higher_is_better: bool


# every metric family the evaluators produce: (higher is better, ranked at a cut-off)
METRICS: dict[str, tuple[bool, bool]] = {"hr": (True, True), "ndcg": (True, True), "auc": (True, False),
                                          "logloss": (False, False), "accuracy": (True, False)}
TASK_FAMILIES = {"seqrec": ("hr", "ndcg"), "ctr": ("auc", "logloss", "accuracy")}


def _family(name: str) -> str:
    return name.split("@", 1)[0].lower()


def metric(name: str) -> Metric:
    """The Metric of a recorded key such as "hr@10", "ndcg@20", "auc" or "logloss"."""
    fam = _family(name)
    if fam not in METRICS:
        raise MetricError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    higher, ranked = METRICS[fam]
    if ranked and "@" not in name:
        raise MetricError(f"{name!r} needs a cut-off, e.g. {fam}@10")
    return Metric(name.lower(), name.upper(), higher)


def task_metrics(task: str, eval_cfg) -> list[Metric]:
    """The metrics reported for a task, in table order, from eval.metrics[task] and eval.ks (a ranking family
    is expanded at every cut-off)."""
    cfg = dict(eval_cfg or {})
    fams = (cfg.get("metrics") or {}).get(task) or list(TASK_FAMILIES[task][:2])
    ks = [int(k) for k in (cfg.get("ks") or (5, 10))]
    out = []
    for fam in fams:
        fam = str(fam).lower()
        if fam not in METRICS or fam not in TASK_FAMILIES[task]:
            raise MetricError(f"eval.metrics.{task}: {fam!r} is not a {task} metric; known: "
                              f"{list(TASK_FAMILIES[task])}")
        out += [metric(f"{fam}@{k}") for k in ks] if METRICS[fam][1] else [metric(fam)]
    return out


def main_metric(task: str, eval_cfg) -> Metric:
    """The metric the sweeps' figures show: eval.main_metric[task] (a ranking family at the largest cut-off),
    else the first reported metric."""
    cfg = dict(eval_cfg or {})
    fam = (cfg.get("main_metric") or {}).get(task)
    listed = task_metrics(task, cfg)
    if fam is None:
        return listed[0]
    fam = str(fam).lower()
    if "@" in fam:
        return metric(fam)
    if METRICS.get(fam, (True, False))[1]:
        return metric(f"{fam}@{max(int(k) for k in (cfg.get('ks') or (5, 10)))}")
    return metric(fam)
