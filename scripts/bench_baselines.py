"""Selection time of the paper's baselines (CCS, D2-Pruning, Moderate, DEALRec) at the real Games size, next to
GORACS. Synthetic signals: 139,796 x 384 Gaussian-cluster embeddings; gradient norms resampled (with
replacement, seeded) from the 15,000 real LLaMA-7B Games norms in ../shared/data/goracs-example-grads (the only
real norms available); EL2N is not needed by these selectors.

Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_baselines.py [--goracs] [--dealrec-n 10000]
       OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_baselines.py --only-dealrec --dealrec-real
(--dealrec-real: DEALRec on the real Games SeqRec training histories of ../shared/data/amazon-games-2018, every
sample and the whole catalogue, with the parameters of configs/selector/dealrec.yaml; about an hour on one core)
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from goracs.selection import Signals, make_selector

ROOT = Path(__file__).resolve().parent.parent
GRADS = ROOT.parent / "shared" / "data" / "goracs-example-grads" / "grad_norms.npy"


def clustered(n: int, d: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian clusters, row-normalised like sentence embeddings."""
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    x = centres[rng.integers(n_clusters, size=n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def real_norms(n: int, rng: np.random.Generator) -> np.ndarray:
    """n gradient norms resampled from the real 15,000 (or gamma-distributed if the file is absent)."""
    if GRADS.exists():
        g = np.load(GRADS).astype(np.float64).reshape(-1)
        return rng.choice(g, size=n, replace=True)
    print(f"note: {GRADS} absent, gradient norms drawn from a gamma distribution")
    return rng.gamma(2.0, 1.0, size=n)


def timed(name: str, params: dict, sig: Signals, budget: int, seed: int = 0) -> dict:
    """Build, run and time one selector; print one table row."""
    sel = make_selector(name, **params)
    t0, c0 = time.perf_counter(), time.process_time()
    out = sel.select(sig, budget, seed)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    extra = {k: v for k, v in out.report.items() if k in ("knn", "knn_time_s", "n_edges", "cg_iters",
                                                           "surrogate_train_s", "refit_s", "influence_s")}
    extra = ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
    print(f"| {name} | {sig.n_train:,} | {budget} | {dt:.2f} | {cpu:.2f} | {extra} |", flush=True)
    return {**out.report, "wall_s": dt, "cpu_s": cpu}


def dealrec_real(budget: int, overrides: dict | None = None) -> None:
    """DEALRec at the real size: the Games SeqRec training samples (histories, targets, catalogue) as the
    pipeline builds them, gradient norms resampled from the real ones, parameters from the selector config."""
    from omegaconf import OmegaConf

    from goracs.cache import StageCache
    from goracs.data.prepare import prepare
    from goracs.pipeline import sequence_signals

    shared = ROOT.parent / "shared" / "data" / "amazon-games-2018"
    if not shared.exists():
        raise SystemExit(f"{shared} is absent: --dealrec-real needs the real Games fixture")
    ds = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "dataset" / "games_recbole.yaml"))
    ds["root"] = str(shared)
    t0 = time.perf_counter()
    data = prepare(ds, {"name": "seqrec", "max_history": 10, "n_negatives": 99}, StageCache(ROOT / "cache"),
                   progress=False)
    extra = sequence_signals({"train": data.train, "catalogue": data.catalogue})
    n = len(extra["targets"])
    print(f"# real Games SeqRec train split: {n:,} samples, {extra['n_items']:,} items, mean history "
          f"{np.mean([len(h) for h in extra['histories']]):.1f} (prepared in {time.perf_counter() - t0:.0f} s)")
    params = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "selector" /
                                                                     "dealrec.yaml")).items()
              if k not in ("name", "budget", "_target_")}
    print(f"# parameters (configs/selector/dealrec.yaml): {params}")
    full = dict(params)
    params.update(overrides or {})
    if overrides:
        print(f"# SHORTENED run, overrides: {overrides} (the line after the table projects the configured run)")
    rng = np.random.default_rng(0)
    sig = Signals(embeddings=np.zeros((n, 1), dtype=np.float32), grad_norms=real_norms(n, rng), extra=extra)
    print("| selector | pool N | budget | wall (s) | CPU (s) | notes |")
    print("|---|---|---|---|---|---|")
    rep = timed("dealrec", {**params, "progress": True}, sig, budget)
    if overrides:
        # each phase is linear in its count: surrogate epochs, L-BFGS iterations (head refit), CG iterations
        # (influence); CG may stop early at its tolerance, so the projection is an upper bound for that part
        train = rep["surrogate_train_s"] * full["epochs"] / params["epochs"]
        refit = rep["refit_s"] * full["refit_iters"] / params["refit_iters"]
        # the selector's influence_s counts from the end of training, so it holds the refit too
        infl = (rep["influence_s"] - rep["refit_s"]) * full["cg_iters"] / max(1, rep.get("cg_iters", params["cg_iters"]))
        print(f"# projection for the configured run ({full['epochs']} epochs, {full['refit_iters']} refit and "
              f"{full['cg_iters']} CG iterations), wall at this run's load: surrogate {train:.0f} s + refit "
              f"{refit:.0f} s + influence <= {infl:.0f} s = {train + refit + infl:.0f} s "
              f"({(train + refit + infl) / 60:.1f} min)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=139_796)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--n-val", type=int, default=5_000)
    ap.add_argument("--dealrec-n", type=int, default=10_000, help="DEALRec pool size (0: skip)")
    ap.add_argument("--dealrec-items", type=int, default=2_000)
    ap.add_argument("--dealrec-epochs", type=int, default=2)
    ap.add_argument("--dealrec-real", action="store_true",
                    help="DEALRec on the real Games SeqRec train split, full catalogue, config parameters")
    ap.add_argument("--dealrec-short", action="store_true",
                    help="with --dealrec-real: 1 surrogate epoch, 3 refit and 3 CG iterations, and a projection "
                         "of the configured run from the measured phases")
    ap.add_argument("--only-dealrec", action="store_true", help="skip CCS, Moderate and D2-Pruning")
    ap.add_argument("--goracs", action="store_true", help="also time make_selector('goracs') (minutes)")
    args = ap.parse_args()
    if args.dealrec_real:
        torch.set_num_threads(1)
        dealrec_real(args.budget, {"epochs": 1, "refit_iters": 3, "cg_iters": 3} if args.dealrec_short else None)
        return
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = clustered(args.n, args.dim, 200, rng)
    g = real_norms(args.n, rng)
    sig = Signals(embeddings=x, grad_norms=g)
    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
          f"N={args.n:,}, d={args.dim}, budget={args.budget}")
    print("| selector | pool N | budget | wall (s) | CPU (s) | notes |")
    print("|---|---|---|---|---|---|")
    if not args.only_dealrec:
        timed("ccs", {}, sig, args.budget)
        timed("moderate", {}, sig, args.budget)
        timed("d2pruning", {}, sig, args.budget)
    if args.dealrec_n:
        # DEALRec's cost is the surrogate training and the full-catalogue softmax passes (N x n_items x d per
        # pass); at the full size on one CPU core that is hours, so it runs on a smaller pool, labelled as such
        n, n_items = args.dealrec_n, args.dealrec_items
        hist = [list(rng.integers(n_items, size=rng.integers(1, 11))) for _ in range(n)]
        targets = np.array([(h[-1] + 1) % n_items if rng.uniform() < 0.5 else rng.integers(n_items) for h in hist])
        sub = Signals(embeddings=x[:n], grad_norms=g[:n],
                      extra={"histories": hist, "targets": targets, "n_items": n_items})
        timed("dealrec", {"epochs": args.dealrec_epochs}, sub, args.budget)
        print(f"(dealrec on a smaller pool: N={n:,}, n_items={n_items:,}, {args.dealrec_epochs} surrogate "
              f"epochs, other parameters as configs/selector/dealrec.yaml)")
    if args.goracs:
        sig.val_embeddings = clustered(args.n_val, args.dim, 200, np.random.default_rng(1))
        timed("goracs", {"progress": False}, sig, args.budget)
    else:
        print("(GORACS not run here: its time at this size is in results/bench_itra.md)")


if __name__ == "__main__":
    main()
