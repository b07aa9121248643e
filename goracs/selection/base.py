"""The selector interface shared by GORACS and every baseline (built from their configs by goracs.selection.build)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class SelectionError(ValueError):
    """Raised for inputs that would otherwise give a silently wrong selection."""


@dataclass
class Signals:
    """Per-sample signals a selector may use; arrays are aligned with the training (and validation) samples."""

    embeddings: np.ndarray | None = None  # (N, d) train text embeddings
    val_embeddings: np.ndarray | None = None  # (M, d) validation text embeddings
    grad_norms: np.ndarray | None = None  # (N,) per-sample gradient norms
    el2n: np.ndarray | None = None  # (N,) EL2N scores
    labels: np.ndarray | None = None  # (N,) integer class labels (CTR), None for SeqRec
    val_labels: np.ndarray | None = None  # (M,) integer class labels of the validation set
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. user/item sequences for DEALRec
    n: int | None = None  # pool size, for selectors that need no per-sample signal (random)

    @property
    def n_train(self) -> int:
        if self.n is not None:
            return int(self.n)
        for a in (self.embeddings, self.grad_norms, self.el2n, self.labels):
            if a is not None:
                return len(a)
        raise SelectionError("Signals holds no per-sample array: cannot tell the pool size")

    def require(self, *names: str) -> None:
        """Check that the named signals are present, finite and aligned with the pool."""
        n = self.n_train
        for name in names:
            a = getattr(self, name)
            if a is None:
                raise SelectionError(f"this selector needs the signal '{name}', which was not computed")
            a = np.asarray(a)
            if name.startswith("val_"):
                if len(a) == 0:
                    raise SelectionError(f"signal '{name}' is empty: the validation set has no samples")
            elif len(a) != n:
                raise SelectionError(f"signal '{name}' has {len(a)} rows but the pool has {n} samples")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                bad = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))
                raise SelectionError(
                    f"signal '{name}' has {len(bad)} non-finite rows (NaN or inf), first at index {bad[0]}")
        if self.embeddings is not None and self.val_embeddings is not None and \
                np.asarray(self.embeddings).shape[1:] != np.asarray(self.val_embeddings).shape[1:]:
            raise SelectionError(
                f"train embeddings have shape {np.shape(self.embeddings)} but validation embeddings "
                f"{np.shape(self.val_embeddings)}: the dimensions differ")


@dataclass
class Selection:
    """A selector's answer: sorted distinct train indices and a report (time, objective values, trajectory)."""

    indices: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


class Selector:
    """Base class: subclasses implement `_select`; `select` validates budget and output."""

    name: str = "base"
    needs: tuple[str, ...] = ()

    def select(self, signals: Signals, budget: int, seed: int = 0) -> Selection:
        """Pick `budget` distinct training samples."""
        n = signals.n_train
        budget = int(budget)
        if budget <= 0:
            raise SelectionError(f"budget must be positive, got {budget}")
        signals.require(*self.needs)
        if budget >= n:
            warnings.warn(f"budget {budget} >= pool size {n}: returning the whole pool", stacklevel=2)
            return Selection(np.arange(n), {"selector": self.name, "whole_pool": True})
        out = self._select(signals, budget, seed)
        idx = np.asarray(out.indices, dtype=np.int64)
        if len(idx) != budget or len(np.unique(idx)) != budget or idx.min() < 0 or idx.max() >= n:
            raise AssertionError(f"selector {self.name} returned an invalid selection "
                                 f"({len(idx)} indices, {len(np.unique(idx))} distinct, budget {budget})")
        out.indices = np.sort(idx)
        out.report.setdefault("selector", self.name)
        return out

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:  # pragma: no cover
        raise NotImplementedError
