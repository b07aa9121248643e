"""The GORACS selector (configs/selector/goracs.yaml): the cost from embeddings and gradient norms, then ITRA
(goracs.selection.refine.itra), label-enhanced for classification tasks (goracs.selection.label)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from goracs.runtime import resolve_device
from goracs.selection.base import Selection, SelectionError, Selector, Signals
from goracs.selection.cost import compute_cost
from goracs.selection.label import LABEL_COSTS, label_enhanced_itra
from goracs.selection.mi import MI_MODES
from goracs.selection.refine import itra
from goracs.selection.scale import COST_STORAGES, choose_storage, itra_blocked


def _check_params(lam, max_iters, cut_num, mi_estimate, label_enhanced):
    if not np.isfinite(float(lam)):
        raise SelectionError(f"lam must be finite, got {lam}")
    if int(max_iters) < 0:
        raise SelectionError(f"max_iters must be >= 0, got {max_iters}")
    if int(cut_num) < 1:
        raise SelectionError(f"cut_num must be >= 1, got {cut_num}")
    if mi_estimate not in MI_MODES:
        raise SelectionError(f"mi_estimate must be one of {MI_MODES}, got {mi_estimate!r}")
    if label_enhanced not in ("auto", True, False):
        raise SelectionError(f"label_enhanced must be auto, true or false, got {label_enhanced!r}")


class GoracsSelector(Selector):
    """GORACS: cost from embeddings and gradient norms, ITRA (label-enhanced for classification tasks)."""

    name = "goracs"
    needs = ("embeddings", "val_embeddings", "grad_norms")

    def __init__(self, lam: float = 0.1, max_iters: int = 100, cut_num: int = 30, mi_estimate: str = "tight",
                 label_enhanced: Any = "auto", device: str = "auto", screen: bool = True, verify: bool = False,
                 progress: bool = True, chunk_rows: int = 2048, label_cost: str = "authors",
                 cost_storage: str = "auto", dense_max_gib: float = 8.0):
        _check_params(lam, max_iters, cut_num, mi_estimate, label_enhanced)
        if label_cost not in LABEL_COSTS:
            raise SelectionError(f"label_cost must be one of {LABEL_COSTS}, got {label_cost!r}")
        if cost_storage not in COST_STORAGES:
            raise SelectionError(f"cost_storage must be one of {COST_STORAGES}, got {cost_storage!r}")
        if cost_storage == "blocked" and mi_estimate != "tight":
            raise SelectionError("cost_storage=blocked needs mi_estimate=tight (the reference mode re-scores every "
                                 "cost row each round): use cost_storage=dense or auto")
        if not float(dense_max_gib) > 0:
            raise SelectionError(f"dense_max_gib must be > 0, got {dense_max_gib}")
        self.cost_storage = cost_storage
        self.dense_max_gib = float(dense_max_gib)
        self.label_cost = label_cost
        self.lam = float(lam)
        self.max_iters = int(max_iters)
        self.cut_num = int(cut_num)
        self.mi_estimate = mi_estimate
        self.label_enhanced = label_enhanced
        self.device = device
        self.screen = bool(screen)
        self.verify = bool(verify)
        self.progress = bool(progress)
        self.chunk_rows = int(chunk_rows)

    def _itra_kwargs(self) -> dict:
        return dict(max_iters=self.max_iters, cut_num=self.cut_num, mi_estimate=self.mi_estimate,
                    screen=self.screen, verify=self.verify, progress=self.progress)

    def _storage(self) -> str:
        # the reference mode needs the dense matrix (it re-scores every row each round)
        return "dense" if self.mi_estimate != "tight" else self.cost_storage

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        dev = resolve_device(self.device)
        use_labels = signals.labels is not None if self.label_enhanced == "auto" else bool(self.label_enhanced)
        t0 = time.perf_counter()
        if use_labels:
            if signals.labels is None or signals.val_labels is None:
                raise SelectionError("label-enhanced ITRA needs both labels and val_labels")
            idx, report = label_enhanced_itra(signals.embeddings, signals.val_embeddings, signals.grad_norms,
                                              signals.labels, signals.val_labels, budget, lam=self.lam,
                                              device=str(dev), chunk_rows=self.chunk_rows,
                                              label_cost=self.label_cost, cost_storage=self._storage(),
                                              dense_max_gib=self.dense_max_gib, **self._itra_kwargs())
        else:
            N, M = len(signals.embeddings), len(signals.val_embeddings)
            storage = choose_storage(self._storage(), N, M, self.dense_max_gib)
            if storage == "blocked":
                idx, report = itra_blocked(signals.embeddings, signals.val_embeddings, signals.grad_norms, self.lam,
                                           budget, device=str(dev), chunk_rows=self.chunk_rows, **self._itra_kwargs())
            else:
                C = compute_cost(signals.embeddings, signals.val_embeddings, signals.grad_norms, self.lam,
                                 device=str(dev), chunk_rows=self.chunk_rows, progress=self.progress)
                t_cost = time.perf_counter() - t0
                idx, report = itra(C, budget, **self._itra_kwargs())
                report["time_cost_s"] = t_cost
                del C
            report["cost_storage"] = storage
        report.update({"lam": self.lam, "budget": budget, "label_enhanced": use_labels, "device": str(dev),
                       "seed_used": False, "time_total_s": time.perf_counter() - t0})
        return Selection(np.asarray(idx, dtype=np.int64), report)
