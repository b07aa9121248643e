"""Figures for results people look at: metric against lambda and budget, POO descent, POO against test loss."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on these machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from goracs.io import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def metric_vs(runs: pd.DataFrame, x: str, metric: str, path: str | os.PathLike, title: str = "",
              reference: tuple[str, float, float, float] | None = None) -> Path:
    """Mean of `metric` against `x` (lam or budget), one line per selector, with the 95 % t interval over seeds
    as error bars (none for a single seed) and each point's seed count beside it. `reference` (label, mean, low,
    high): a row that does not vary with `x` (random against lambda), drawn as a horizontal line with its interval
    shaded."""
    from goracs.report.stats import mean_ci

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if reference is not None:
        label, m, lo, hi = reference
        ax.axhline(m, color="grey", linestyle="--", linewidth=1, label=label)
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axhspan(lo, hi, color="grey", alpha=0.15, linewidth=0)
    df = runs.dropna(subset=[metric, x])
    for sel, part in df.groupby("selector"):
        rows = []
        for xv, grp in part.groupby(x):
            m, lo, hi = mean_ci(grp[metric].to_numpy(float))
            rows.append((float(xv), m, 0.0 if np.isnan(lo) else m - lo, 0.0 if np.isnan(hi) else hi - m, len(grp)))
        g = np.asarray(sorted(rows))
        ax.errorbar(g[:, 0], g[:, 1], yerr=g[:, 2:4].T, marker="o", capsize=3, label=sel)
        for xv, m, *_, n in g:  # how many seeds each point averages
            ax.annotate(f"n={int(n)}", (xv, m), textcoords="offset points", xytext=(5, -9), fontsize=7)
    ax.set_xlabel({"lam": "lambda", "budget": "budget n"}.get(x, x))
    if x == "budget":
        ax.set_xscale("log", base=2)
    ax.set_ylabel(metric.upper())
    ax.set_title(title or f"{metric.upper()} against {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def poo_descent(trajectories: dict[str, list[float]], path: str | os.PathLike) -> Path:
    """POO after each accepted exchange of the refinement, one line per run."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, traj in trajectories.items():
        ax.plot(np.arange(len(traj)), traj, marker=".", label=label)
    ax.set_xlabel("accepted exchanges")
    ax.set_ylabel("POO (OT cost to validation set)")
    ax.set_title("POO descent during ITRA refinement")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def proxy_check(poo: np.ndarray, loss: np.ndarray, kinds: list[str], path: str | os.PathLike) -> Path:
    """POO of subsets against the test loss after fine-tuning on them (is POO a good proxy?)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    kinds = np.asarray(kinds)
    for kind in sorted(set(kinds)):
        m = kinds == kind
        ax.scatter(np.asarray(poo)[m], np.asarray(loss)[m], label=kind, s=25)
    from goracs.report.stats import spearman_ci

    rho, lo, hi = spearman_ci(poo, loss)
    ax.set_xlabel("POO of the subset")
    ax.set_ylabel("test loss after fine-tuning")
    ax.set_title(f"Proxy check: Spearman {rho:.2f} [{lo:.2f}, {hi:.2f}], {len(poo)} subsets", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def differences(rows: pd.DataFrame, path: str | os.PathLike, xlabel: str, title: str = "") -> Path:
    """Each selector's difference to a reference with its intervals, one line per selector: `rows` has columns
    label, view (e.g. "over test samples" / "over seeds"), diff, lo, hi (lo / hi nan: a point without interval).
    A vertical line at 0: a selector is separated from the reference where its interval misses it."""
    labels = list(dict.fromkeys(rows["label"]))
    views = list(dict.fromkeys(rows["view"]))
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(labels) + 1.2))
    for k, view in enumerate(views):
        part = rows[rows["view"] == view].set_index("label")
        off = (k - (len(views) - 1) / 2) * 0.25
        for i, lab in enumerate(labels):
            if lab not in part.index:
                continue
            r = part.loc[lab]
            err = None if np.isnan(r["lo"]) else [[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]]
            ax.errorbar([r["diff"]], [i + off], xerr=err, fmt="os"[k % 2], color=f"C{k}", capsize=3,
                        label=view if i == next(j for j, x in enumerate(labels) if x in part.index) else None)
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return _save(fig, path)
