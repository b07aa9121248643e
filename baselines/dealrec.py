"""DEALRec (Lin et al., SIGIR 2024, arXiv 2401.17197): surrogate-model influence score plus lambda times the LLM
effort score (the per-sample gradient norm, method.md 4), then coverage-enhanced stratified sampling.

Inputs (`signals.extra`, filled by the pipeline for SeqRec):
  - "histories": sequence of N lists of int item ids in 0..n_items-1, oldest first (the sample's history);
  - "targets":   int array (N,), the next item of each sample, in 0..n_items-1;
  - "n_items":   int, the catalogue size.
plus `signals.grad_norms` (N,) as the effort score.

Steps, and where they differ from the authors' code:
1. Surrogate: a SASRec-style model (item + position embeddings, `n_blocks` causal transformer blocks, the last
   position's state h), then a linear d x d "influence head" W, and logits W h . e_item over the whole catalogue
   with the item embeddings tied (cross-entropy), trained on all training samples with Adam (seeded, CPU,
   `epochs` passes; the authors train 200 epochs on a GPU with early stopping). Sequences are left-padded; the
   pad id attends like an "empty" context so a history of length 0 is still well defined.
2. Influence layer: like the authors, one last d x d linear layer (they use the last block's attention output
   dense, 64 x 64). Ours sits after the encoder, so with the encoder and item embeddings frozen the loss is
   convex in W (softmax regression on features W h), which makes the influence function's assumptions hold
   and leave-one-out retraining well defined. W is refitted to the optimum of
   J(W) = mean_i CE_i(W) + reg/2 ||W||^2 by L-BFGS (`refit_iters`).
3. Influence of sample s on the empirical risk R = mean_i CE_i: removing s moves W by about (1/N) H^-1 g_s
   (H = Hessian of J, so reg is the damping; the authors use LiSSA with damping 0.01, scale 25), which
   changes R by (1/N) grad R^T H^-1 g_s. We solve H u = grad R once by conjugate gradients with exact
   Hessian-vector products (deterministic, unlike LiSSA) and score g_s^T u. Higher = removing s would hurt
   the risk more = more important.
4. Overall score (authors' prune.py): min-max(influence) + lambda * min-max(effort); then coverage-enhanced
   selection = CCS's procedure (baselines.ccs.coverage_sample): drop the top `hard_prune` fraction of the
   overall score, `k` equal-width strata, smallest stratum first. Games hyper-parameters from the authors'
   release: lambda = 0.3, k = 50, hard_prune = 0.1; surrogate hidden 64, 2 blocks, 2 heads, dropout 0.5,
   lr 1e-3, batch 500.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from baselines.ccs import check_fraction, check_positive_int, coverage_sample
from goracs.selection.base import Selection, SelectionError, Selector, Signals

EXTRA_KEYS = ("histories", "targets", "n_items")


def pad_histories(histories: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """Left-pad (id 0) the last max_len items of each history, shifted by +1 so 0 is the pad id."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for i, h in enumerate(histories):
        h = list(h)[-max_len:]
        if h:
            out[i, max_len - len(h):] = np.asarray(h, dtype=np.int64) + 1
    return out


class Surrogate(nn.Module):
    """SASRec-style encoder, a d x d influence head, and tied item embeddings for the output scores."""

    def __init__(self, n_items: int, max_len: int, hidden: int, n_blocks: int, n_heads: int, dropout: float):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos = nn.Embedding(max_len, hidden)
        layer = nn.TransformerEncoderLayer(hidden, n_heads, 4 * hidden, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, hidden, bias=False)
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.register_buffer("causal", torch.triu(torch.full((max_len, max_len), float("-inf")), 1))

    def features(self, seq: torch.Tensor) -> torch.Tensor:
        """The encoder's state at the last position (the input of the influence head)."""
        x = self.drop(self.item(seq) + self.pos.weight[None, : seq.shape[1]])
        x = self.encoder(x, mask=self.causal[: seq.shape[1], : seq.shape[1]], is_causal=True)
        return self.norm(x[:, -1])

    def item_matrix(self) -> torch.Tensor:
        """Output embeddings of the n_items real items (pad row dropped)."""
        return self.item.weight[1:]

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(seq)) @ self.item_matrix().T


def train_surrogate(seqs: np.ndarray, targets: np.ndarray, n_items: int, *, hidden: int = 64, n_blocks: int = 2,
                    n_heads: int = 2, dropout: float = 0.5, epochs: int = 5, lr: float = 1e-3,
                    batch_size: int = 500, seed: int = 0, progress: bool = False) -> Surrogate:
    """Train the surrogate with full-catalogue cross-entropy (Adam, seeded shuffles)."""
    torch.manual_seed(seed)
    model = Surrogate(n_items, seqs.shape[1], hidden, n_blocks, n_heads, dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    s_t, y_t = torch.from_numpy(seqs), torch.from_numpy(np.asarray(targets, dtype=np.int64))
    model.train()
    n_batches = -(-len(s_t) // batch_size)
    with tqdm(total=epochs * n_batches, desc="DEALRec surrogate (batches)", disable=not progress) as bar:
        for _ in range(epochs):
            for b in torch.randperm(len(s_t), generator=g).split(batch_size):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(s_t[b]), y_t[b])
                loss.backward()
                opt.step()
                bar.update(1)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------
# The convex influence layer: logits = (F W^T) E^T with F (N x d) frozen features, E (n_items x d) frozen.

def _chunks(n: int, chunk: int):
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


BLOCK_FLOATS = 1 << 21  # 8 MB of float32 per (rows x n_items) logits block


def block_rows(chunk: int | str, n_items: int) -> int:
    """Rows per logits block. 'auto' keeps a block at about 8 MB: glibc then reuses heap memory for the several
    block-sized temporaries of every pass, whereas blocks above its 32 MB mmap ceiling are mapped and unmapped
    each time, and page faults cost as much CPU as the arithmetic (measured at the Games size: 4,096-row blocks
    x 16,804 items spent 1,178 s in the kernel against 1,222 s of user time)."""
    if chunk == "auto":
        return max(16, BLOCK_FLOATS // max(1, int(n_items)))
    try:
        return check_positive_int("chunk", chunk)
    except (TypeError, ValueError):
        raise ValueError(f"chunk must be a positive integer or 'auto', got {chunk!r}") from None


def head_loss_grad(W: torch.Tensor, F: torch.Tensor, E: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                   chunk: int = 4096) -> tuple[float, torch.Tensor]:
    """Weighted mean cross-entropy sum_i w_i CE_i / N and its gradient in W, in row chunks."""
    n = len(F)
    loss, grad = 0.0, torch.zeros_like(W)
    for s, e in _chunks(n, chunk):
        z = (F[s:e] @ W.T) @ E.T
        lse = torch.logsumexp(z, 1)
        w = weights[s:e]
        loss += float((w * (lse - z[torch.arange(e - s), y[s:e]])).sum())
        p = torch.softmax(z, 1)
        p[torch.arange(e - s), y[s:e]] -= 1.0
        r = (p * w[:, None]) @ E  # dCE/d(W f) per row
        grad += r.T @ F[s:e]
    return loss / n, grad / n


def fit_head(W0: torch.Tensor, F: torch.Tensor, E: torch.Tensor, y: torch.Tensor, reg: float,
             weights: torch.Tensor | None = None, iters: int = 50, tol: float = 1e-9,
             chunk: int = 4096, progress: bool = False) -> torch.Tensor:
    """Minimise sum_i w_i CE_i / N + reg/2 ||W||^2 over the head W by L-BFGS (convex: a unique optimum)."""
    weights = torch.ones(len(F), dtype=F.dtype) if weights is None else weights
    W = W0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W], lr=1.0, max_iter=iters, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                            history_size=20, line_search_fn="strong_wolfe")

    bar = tqdm(desc="DEALRec head refit (L-BFGS evaluations)", disable=not progress)

    def closure():
        with torch.no_grad():
            loss, grad = head_loss_grad(W, F, E, y, weights, chunk)
            W.grad = grad + reg * W
            bar.update(1)
            return torch.tensor(loss + 0.5 * reg * float((W * W).sum()), dtype=F.dtype)

    try:
        opt.step(closure)
    finally:
        bar.close()
    return W.detach()


def head_hvp(V: torch.Tensor, W: torch.Tensor, F: torch.Tensor, E: torch.Tensor, reg: float,
             chunk: int = 4096) -> torch.Tensor:
    """Hessian of mean_i CE_i + reg/2 ||W||^2 at W, applied to the direction V (same shape as W)."""
    out = torch.zeros_like(W)
    for s, e in _chunks(len(F), chunk):
        p = torch.softmax((F[s:e] @ W.T) @ E.T, 1)
        dz = (F[s:e] @ V.T) @ E.T  # directional change of the logits
        hz = p * dz - p * (p * dz).sum(1, keepdim=True)  # softmax cross-entropy Hessian in logit space
        out += (hz @ E).T @ F[s:e]
    return out / len(F) + reg * V


def conjugate_gradient(hvp, b: torch.Tensor, iters: int, tol: float = 1e-8,
                       progress: bool = False) -> tuple[torch.Tensor, int]:
    """Solve H u = b for symmetric positive-definite H given only products H v; returns (u, iterations)."""
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float((r * r).sum())
    b_norm = max(float(b.norm()), 1e-30)
    for it in tqdm(range(1, iters + 1), desc="DEALRec inverse-HVP (CG)", disable=not progress):
        hp = hvp(p)
        alpha = rr / float((p * hp).sum())
        u += alpha * p
        r -= alpha * hp
        rr_new = float((r * r).sum())
        if rr_new ** 0.5 <= tol * b_norm:
            return u, it
        p = r + (rr_new / rr) * p
        rr = rr_new
    return u, iters


def influence_scores(W: torch.Tensor, F: torch.Tensor, E: torch.Tensor, y: torch.Tensor, reg: float,
                     cg_iters: int = 50, chunk: int = 4096, progress: bool = False) -> tuple[np.ndarray, dict]:
    """g_s^T H^-1 grad R for every sample s: N times the first-order change of the mean training loss R when
    s is removed from the regularised head objective (higher = more important)."""
    ones = torch.ones(len(F), dtype=F.dtype)
    _, grad_r = head_loss_grad(W, F, E, y, ones, chunk)
    u, used = conjugate_gradient(lambda v: head_hvp(v, W, F, E, reg, chunk), grad_r, cg_iters, progress=progress)
    out = np.empty(len(F), dtype=np.float64)
    for s, e in _chunks(len(F), chunk):
        p = torch.softmax((F[s:e] @ W.T) @ E.T, 1)
        p[torch.arange(e - s), y[s:e]] -= 1.0
        r = p @ E  # per-sample gradient is the outer product r_s f_s^T
        out[s:e] = (r * (F[s:e] @ u.T)).sum(1).double().numpy()
    return out, {"cg_iters": used, "grad_risk_norm": float(grad_r.norm())}


def minmax(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (a constant array maps to zeros)."""
    a = np.asarray(a, dtype=np.float64)
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


class DEALRecSelector(Selector):
    """DEALRec: influence (surrogate, one convex layer, CG inverse-HVP) + lambda * effort, then CCS sampling."""

    name = "dealrec"
    needs = ("grad_norms",)

    def __init__(self, lam: float = 0.3, k: int = 50, hard_prune: float = 0.1, hidden: int = 64,
                 n_blocks: int = 2, n_heads: int = 2, dropout: float = 0.5, max_len: int = 50, epochs: int = 5,
                 lr: float = 1e-3, batch_size: int = 500, reg: float = 0.01, refit_iters: int = 30,
                 cg_iters: int = 30, chunk: int | str = "auto", progress: bool = False):
        if not np.isfinite(float(lam)) or float(lam) < 0:
            raise ValueError(f"lam must be a finite non-negative number, got {lam!r}")
        if not float(reg) > 0:
            raise ValueError(f"reg must be positive (it is the Hessian damping), got {reg!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not float(lr) > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.lam, self.reg, self.dropout, self.lr = float(lam), float(reg), float(dropout), float(lr)
        self.k = check_positive_int("k", k)
        self.hard_prune = check_fraction("hard_prune", hard_prune)
        self.hidden, self.n_blocks = check_positive_int("hidden", hidden), check_positive_int("n_blocks", n_blocks)
        self.n_heads = check_positive_int("n_heads", n_heads)
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
        self.max_len, self.epochs = check_positive_int("max_len", max_len), check_positive_int("epochs", epochs)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.refit_iters, self.cg_iters = check_positive_int("refit_iters", refit_iters), \
            check_positive_int("cg_iters", cg_iters)
        block_rows(chunk, 1)  # validates
        self.chunk, self.progress = chunk, bool(progress)

    @staticmethod
    def read_extra(signals: Signals) -> tuple[list, np.ndarray, int]:
        """Validate and return (histories, targets, n_items) from signals.extra."""
        missing = [k for k in EXTRA_KEYS if k not in signals.extra]
        if missing:
            raise SelectionError(f"dealrec needs signals.extra keys {list(EXTRA_KEYS)}; missing {missing}")
        hist, targets, n_items = signals.extra["histories"], np.asarray(signals.extra["targets"]), \
            int(signals.extra["n_items"])
        n = signals.n_train
        if len(hist) != n or targets.shape != (n,):
            raise SelectionError(f"extra['histories'] ({len(hist)}) and extra['targets'] {targets.shape} must "
                                 f"have one entry per training sample ({n})")
        if targets.dtype.kind not in "iu" or targets.min() < 0 or targets.max() >= n_items:
            raise SelectionError(f"extra['targets'] must be ints in [0, n_items={n_items})")
        flat = [i for h in hist for i in h]
        if flat and (min(flat) < 0 or max(flat) >= n_items):
            raise SelectionError(f"extra['histories'] holds item ids outside [0, n_items={n_items})")
        return hist, targets.astype(np.int64), n_items

    def scores(self, signals: Signals, seed: int) -> tuple[np.ndarray, dict]:
        """The raw influence score of every training sample (surrogate trained with this seed)."""
        hist, targets, n_items = self.read_extra(signals)
        max_len = max(1, min(self.max_len, max((len(h) for h in hist), default=1)))
        seqs = pad_histories(hist, max_len)
        t0 = time.perf_counter()
        model = train_surrogate(seqs, targets, n_items, hidden=self.hidden, n_blocks=self.n_blocks,
                                n_heads=self.n_heads, dropout=self.dropout, epochs=self.epochs, lr=self.lr,
                                batch_size=self.batch_size, seed=seed, progress=self.progress)
        t_train = time.perf_counter() - t0
        with torch.no_grad():
            F = torch.cat([model.features(torch.from_numpy(seqs[s:e])) for s, e in _chunks(len(seqs), 4096)])
            E = model.item_matrix().detach().clone()
        y = torch.from_numpy(targets)
        t1 = time.perf_counter()
        rows = block_rows(self.chunk, n_items)
        W = fit_head(model.head.weight.detach(), F, E, y, self.reg, iters=self.refit_iters, chunk=rows,
                     progress=self.progress)
        t_refit = time.perf_counter() - t1
        infl, rep = influence_scores(W, F, E, y, self.reg, self.cg_iters, rows, progress=self.progress)
        rep.update({"surrogate_train_s": t_train, "refit_s": t_refit,
                    "influence_s": time.perf_counter() - t0 - t_train})
        return infl, rep

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:
        t0 = time.perf_counter()
        infl, report = self.scores(signals, seed)
        overall = minmax(infl) + self.lam * minmax(np.asarray(signals.grad_norms, dtype=np.float64))
        idx, rep = coverage_sample(overall, budget, self.hard_prune, self.k, np.random.default_rng(seed))
        report.update(rep)
        report.update({"lam": self.lam, "k": self.k, "hard_prune": self.hard_prune,
                       "time_s": time.perf_counter() - t0})
        return Selection(idx, report)
