"""The GORACS cost matrix (method.md section 2), built in float32 chunks so that the real Games size fits."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from goracs.runtime import resolve_device
from goracs.selection.base import SelectionError


def check_inputs(train_emb, val_emb, grad_norms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and finiteness of the cost inputs; return them as arrays (no copies when possible)."""
    X = np.asarray(train_emb)
    Y = np.asarray(val_emb)
    g = np.asarray(grad_norms, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or Y.ndim != 2:
        raise SelectionError(f"embeddings must be 2-d, got train {X.shape} and validation {Y.shape}")
    if len(Y) == 0:
        raise SelectionError("the validation set is empty: the POO needs at least one validation sample")
    if len(X) == 0:
        raise SelectionError("the training pool is empty")
    if X.shape[1] != Y.shape[1]:
        raise SelectionError(f"train embeddings are {X.shape[1]}-d but validation embeddings {Y.shape[1]}-d")
    if len(g) != len(X):
        raise SelectionError(f"{len(g)} gradient norms for {len(X)} training samples: lengths differ")
    for name, a in (("train embeddings", X), ("validation embeddings", Y), ("gradient norms", g)):
        if a.dtype.kind not in "fiu":
            raise SelectionError(f"{name} must be numeric, got dtype {a.dtype}")
        # Chunked so that a 430 MB embedding matrix is not duplicated as a boolean mask.
        for s in range(0, len(a), 65536):
            blk = a[s:s + 65536]
            if not np.isfinite(blk).all():
                bad = s + int(np.flatnonzero(~np.isfinite(blk.reshape(len(blk), -1)).all(axis=1))[0])
                raise SelectionError(f"{name} contain NaN or infinite values (first bad row {bad})")
    if (g < 0).any():
        raise SelectionError(f"gradient norms must be >= 0; {int((g < 0).sum())} are negative")
    return X, Y, g


class _CostPlan:
    """What both cost paths share: the validated inputs, the centred validation side, and the per-chunk
    arithmetic. A chunk is rows [s, s + chunk_rows) with s a multiple of chunk_rows; the same chunk always gives
    the same float32 values (the BLAS result of a row depends on the chunk it is computed in, so the blocked
    path of goracs.selection.scale recomputes whole chunks, never single rows)."""

    def __init__(self, train_emb, val_emb, grad_norms, lam, device, chunk_rows, scale_distances, grad_max):
        X, Y, g = check_inputs(train_emb, val_emb, grad_norms)
        if not np.isfinite(lam):
            raise SelectionError(f"lambda must be finite, got {lam}")
        if int(chunk_rows) < 1:
            raise SelectionError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.X, self.lam, self.chunk_rows = X, float(lam), int(chunk_rows)
        self.dev = resolve_device(device)
        self.N, self.M = len(X), len(Y)
        self.scale_distances = scale_distances
        gmax = float(g.max()) if grad_max is None else float(grad_max)
        if grad_max is not None and (not np.isfinite(gmax) or gmax < float(g.max())):
            raise SelectionError(f"grad_max {grad_max} is below the largest gradient norm {float(g.max())}")
        if gmax <= 0:
            warnings.warn("all gradient norms are zero: the cost reduces to the distance term", stacklevel=3)
            self.gs = np.zeros(self.N)
        else:
            self.gs = g / gmax
        with torch.no_grad():
            Yt = torch.as_tensor(np.ascontiguousarray(Y), device=self.dev).to(torch.float32)
            # Centring on the validation mean reduces cancellation in |x|^2 + |y|^2 - 2 x.y (float32).
            self.centre = Yt.mean(0, keepdim=True)
            self.Yc = Yt - self.centre
            self.y2 = (self.Yc * self.Yc).sum(1)

    def starts(self, progress: bool = False, desc: str = "cost"):
        it = range(0, self.N, self.chunk_rows)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=desc, unit="chunk")
        return it

    def distances(self, s: int):
        """Distances of chunk s (a float32 tensor on the device), rows s .. s + chunk_rows."""
        e = min(self.N, s + self.chunk_rows)
        with torch.no_grad():
            Xc = torch.as_tensor(np.ascontiguousarray(self.X[s:e]), device=self.dev).to(torch.float32) - self.centre
            d2 = torch.addmm(self.y2[None, :], Xc, self.Yc.T, beta=1.0, alpha=-2.0)
            d2 += (Xc * Xc).sum(1, keepdim=True)
            return d2.clamp_min_(0.0).sqrt_()

    def fit_range(self, progress: bool = False, desc: str = "cost: distances", into: np.ndarray | None = None) -> None:
        """One streaming pass over the distance chunks: per-row min / max, then the global normaliser (set_range);
        `into` (N x M float32) also receives the raw distances (the dense path's first pass)."""
        rowmin = np.empty(self.N)
        rowmax = np.empty(self.N)
        with torch.no_grad():
            for s in self.starts(progress, desc):
                d = self.distances(s)
                e = s + d.shape[0]
                rowmin[s:e] = d.min(1).values.double().cpu().numpy()
                rowmax[s:e] = d.max(1).values.double().cpu().numpy()
                if into is not None:
                    into[s:e] = d.cpu().numpy()
                del d
        self.set_range(rowmin, rowmax)

    def set_range(self, rowmin: np.ndarray, rowmax: np.ndarray) -> None:
        """The global normaliser from the per-row distance extremes of every chunk."""
        dmax = float(rowmax.max()) if self.scale_distances else 1.0
        if dmax <= 0:
            warnings.warn("every train-validation distance is zero", stacklevel=3)
            dmax = 1.0
        # C~ = D/dmax - lam*g; its extremes come from the row extremes because g is constant along a row.
        lo = rowmin / dmax - self.lam * self.gs
        hi = rowmax / dmax - self.lam * self.gs
        cmin, cmax = float(lo.min()), float(hi.max())
        span = cmax - cmin
        if span <= 0:
            warnings.warn("the cost matrix is constant: every selection has the same POO", stacklevel=3)
        self.dmax, self.cmin, self.span = dmax, cmin, span
        self.shift = torch.as_tensor(self.lam * self.gs, dtype=torch.float64)

    def normalise_(self, blk, s: int) -> None:
        """Normalise a CPU float32 tensor of chunk s's distances in place (float64 arithmetic per chunk)."""
        e = s + blk.shape[0]
        with torch.no_grad():
            if self.span > 0:
                t = blk.to(self.dev, torch.float64) / self.dmax - self.shift[s:e, None].to(self.dev)
                t.sub_(self.cmin).div_(self.span).clamp_(0.0, 1.0)
                blk.copy_(t.to(torch.float32).cpu())
                del t
            else:
                blk.zero_()


def compute_cost(train_emb, val_emb, grad_norms, lam: float, *, device: str = "auto",
                 chunk_rows: int = 2048, out: np.ndarray | None = None, progress: bool = False,
                 scale_distances: bool = True, grad_max: float | None = None) -> np.ndarray:
    """Cost C (N x M, float32) of method.md 2: min-max normalised (D / max D - lam * g / max g).

    `scale_distances=False` keeps the raw L2 distances (D instead of D / max D) and `grad_max` divides the
    gradient norms by a given maximum instead of their own (the authors' label-enhanced cost: raw within-class
    distances, gradients divided by the maximum over the whole pool, then min-max per class block)."""
    plan = _CostPlan(train_emb, val_emb, grad_norms, lam, device, chunk_rows, scale_distances, grad_max)
    N, M = plan.N, plan.M
    C = np.empty((N, M), dtype=np.float32) if out is None else out
    if C.shape != (N, M) or C.dtype != np.float32 or not C.flags.c_contiguous:
        raise SelectionError(f"out must be a C-contiguous float32 array of shape {(N, M)}")
    # Pass 1: distances into C, with per-row min / max (enough to get the global normaliser).
    plan.fit_range(progress, "cost: distances", into=C)
    # Pass 2, in place: float64 arithmetic per chunk, stored back as float32.
    for s in plan.starts(progress, "cost: normalise"):
        e = min(N, s + plan.chunk_rows)
        plan.normalise_(torch.from_numpy(C[s:e]), s)
    return C
