"""Label-enhanced ITRA (method.md 3.4): per-class budgets from validation shares, ITRA inside each class block."""

from __future__ import annotations

import warnings

import numpy as np

from goracs.selection.base import SelectionError
from goracs.selection.cost import compute_cost
from goracs.selection.refine import itra
from goracs.selection.scale import choose_storage, itra_blocked


def class_budgets(val_labels, n: int, train_labels=None) -> dict[int, int]:
    """n_c = round(n * share of class c in V) for every class but the first (sorted), which takes the rest: for
    CTR the authors' rule, n_pos = round(n * positive share of V) and n_neg = n - n_pos."""
    yv = np.asarray(val_labels).reshape(-1)
    if len(yv) == 0:
        raise SelectionError("the validation set is empty: class budgets need validation labels")
    if yv.dtype.kind not in "iub":
        if yv.dtype.kind == "f" and np.isfinite(yv).all() and (yv == np.round(yv)).all():
            yv = yv.astype(np.int64)
        else:
            raise SelectionError(f"labels must be integer class ids, got dtype {yv.dtype}")
    classes, counts = np.unique(yv, return_counts=True)
    K = len(classes)
    if n < K:
        raise SelectionError(f"budget {n} is smaller than the number of validation classes ({K}): "
                             "every class needs at least one selected sample")
    shares = counts / counts.sum()
    b = np.zeros(K, dtype=np.int64)
    b[1:] = np.round(n * shares[1:]).astype(np.int64)  # numpy rounds half to even, like Python's round
    b[0] = n - b[1:].sum()
    if b[0] < 0 or (b == 0).any():
        # Rounding can starve or overdraw a class when n is close to K; fall back to largest remainders with
        # one sample per class first, which still sums to n and follows the shares.
        warnings.warn(f"class budgets {b.tolist()} from rounding are invalid for n={n}; using largest remainders "
                      "with at least one sample per class", stacklevel=2)
        rest = n - K
        raw = rest * shares
        b = np.floor(raw).astype(np.int64)
        left = rest - int(b.sum())
        b[np.argsort(-(raw - b), kind="stable")[:left]] += 1
        b += 1
    out = {int(c): int(x) for c, x in zip(classes, b)}
    if train_labels is not None:
        yt = np.asarray(train_labels).reshape(-1)
        avail = {int(c): int((yt == c).sum()) for c in classes}
        missing = [c for c in out if avail[c] == 0]
        if missing:
            raise SelectionError(f"validation classes {missing} have no training samples to select from")
        # A class with fewer training samples than its budget gives all of them; the shortfall goes to the
        # classes with the largest validation share that still have spare samples.
        short = 0
        for c in out:
            if out[c] > avail[c]:
                short += out[c] - avail[c]
                out[c] = avail[c]
        if short:
            warnings.warn(f"some classes have fewer training samples than their budget; {short} moved to "
                          "other classes", stacklevel=2)
            for c in classes[np.argsort(-shares, kind="stable")]:
                c = int(c)
                take = min(short, avail[c] - out[c])
                out[c] += take
                short -= take
            if short:
                raise SelectionError("the budget exceeds the labelled training pool")
    return out


LABEL_COSTS = ("authors", "block")


def label_enhanced_itra(train_emb, val_emb, grad_norms, labels, val_labels, n: int, *, lam: float,
                        device: str = "cpu", chunk_rows: int = 2048, label_cost: str = "authors",
                        cost_storage: str = "dense", dense_max_gib: float = 8.0, **itra_kwargs):
    """Run ITRA on each (T_c x V_c) block with the cost re-normalised inside the block; return the union.

    label_cost="authors" (default, as their LabelEnhancedITRA): raw within-class L2 distances and gradient norms
    divided by their maximum over the whole pool, C~ = D - lam * g / max_T g, then min-max inside the block.
    label_cost="block": the method.md 2 cost computed inside the block (distances divided by the block's maximum
    distance, gradient norms by the block's maximum), then min-max inside the block.
    cost_storage (auto | dense | blocked, chosen per block: goracs.selection.scale) changes memory and time, not
    the result."""
    if label_cost not in LABEL_COSTS:
        raise SelectionError(f"label_cost must be one of {LABEL_COSTS}, got {label_cost!r}")
    yt = np.asarray(labels).reshape(-1)
    yv = np.asarray(val_labels).reshape(-1)
    X = np.asarray(train_emb)
    Y = np.asarray(val_emb)
    g = np.asarray(grad_norms)
    if len(yt) != len(X):
        raise SelectionError(f"{len(yt)} labels for {len(X)} training samples: lengths differ")
    if len(yv) != len(Y):
        raise SelectionError(f"{len(yv)} validation labels for {len(Y)} validation samples: lengths differ")
    budgets = class_budgets(yv, n, yt)
    gpool = float(np.max(g)) if len(g) else 0.0
    picked, per_class = [], {}
    for c, nc in budgets.items():
        if nc == 0:
            continue
        tidx = np.flatnonzero(yt == c)
        vidx = np.flatnonzero(yv == c)
        if nc >= len(tidx):
            picked.append(tidx)
            per_class[c] = {"budget": nc, "pool": len(tidx), "whole_class": True}
            continue
        ckw = (dict(scale_distances=False, grad_max=gpool if gpool > 0 else None) if label_cost == "authors"
               else {})
        storage = choose_storage(cost_storage, len(tidx), len(vidx), dense_max_gib)
        if storage == "blocked":
            rows, rep = itra_blocked(X[tidx], Y[vidx], g[tidx], lam, nc, device=device, chunk_rows=chunk_rows,
                                     **ckw, **itra_kwargs)
        else:
            C = compute_cost(X[tidx], Y[vidx], g[tidx], lam, device=device, chunk_rows=chunk_rows, **ckw)
            rows, rep = itra(C, nc, **itra_kwargs)
            del C
        rep["cost_storage"] = storage
        picked.append(tidx[rows])
        rep.update({"budget": nc, "pool": len(tidx), "n_val": len(vidx)})
        per_class[c] = rep
    idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    report = {"class_budgets": budgets, "per_class": per_class, "label_cost": label_cost}
    return idx, report
