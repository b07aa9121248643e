"""Selection time and peak memory against the pool size N: the dense cost matrix against cost_storage=blocked.

Each (N, storage) runs in its own child process (so that its peak resident memory is its own), on the same
synthetic instance: Gaussian-cluster embeddings (scripts/bench_itra.make_instance: 50 clusters, 384-d like
MiniLM), gradient norms drawn with replacement from the 15,000 real ones, M validation rows. The selection is
GoracsSelector.select (cost + greedy + refine) with the given storage; the parent prints one table comparing the
two storages and whether they selected the same indices. A dense run whose matrix would exceed --dense-max-gib
is not started (reported as not run).

    nice -n 10 env OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python scripts/bench_scale.py \\
        --sizes 15000,50000,139796,280000,560000 --blocked-only 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def _need_gib(N: int, storage: str, args) -> float:
    """A generous estimate of a child's peak: embeddings, the dense matrix or the largest pool, interpreter."""
    emb = 4.0 * (N + args.n_val) * args.dim / 2**30
    rows = N if storage == "dense" else min(N, 200_000)
    return emb + 4.0 * rows * args.n_val / 2**30 + 1.5


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    from bench_itra import make_instance
    from goracs.selection.base import Signals
    from goracs.selection.goracs import GoracsSelector

    t = time.perf_counter()
    X, Y, g, gsrc = make_instance(args.child_n, args.n_val, args.dim, args.clusters, args.seed)
    t_inst = time.perf_counter() - t
    base = _rss_gib()
    sel = GoracsSelector(lam=args.lam, max_iters=args.iters, cut_num=args.cut_num, mi_estimate="tight",
                         device="cpu", progress=False, cost_storage=args.child_storage)
    t = time.perf_counter()
    c = time.process_time()
    out = sel.select(Signals(embeddings=X, val_embeddings=Y, grad_norms=g), budget=args.n, seed=0)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rep = out.report
    np.save(Path(args.child_dir) / f"{args.child_n}_{args.child_storage}.npy", out.indices)
    res = {"N": args.child_n, "storage": rep.get("cost_storage"), "wall_s": wall, "cpu_s": cpu, "peak_gib": peak,
           "base_gib": base, "instance_s": t_inst, "gsrc": gsrc, "poo_greedy": rep.get("poo_greedy"),
           "poo_final": rep.get("poo_final"), "accepted": rep.get("accepted"),
           "time_cost_s": rep.get("time_cost_s"), "time_greedy_s": rep.get("time_greedy_s"),
           "time_refine_s": rep.get("time_refine_s"), "greedy_evals": rep.get("greedy_evals"),
           "blocked": rep.get("blocked")}
    with open(Path(args.child_dir) / f"{args.child_n}_{args.child_storage}.json", "w") as f:
        json.dump(res, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="15000,50000,139796,280000,560000", help="N for both storages")
    ap.add_argument("--blocked-only", default="1000000", help="N for the blocked storage alone ('' for none)")
    ap.add_argument("--n-val", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--lam", type=float, default=0.1)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--cut-num", type=int, default=30)
    ap.add_argument("--blocked-only-iters", type=int, default=None,
                    help="max_iters for the --blocked-only sizes (default: --iters)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense-max-gib", type=float, default=12.0,
                    help="do not start a dense run whose float32 matrix is larger (machine memory guard)")
    ap.add_argument("--mem-margin-gib", type=float, default=2.0,
                    help="start a run only while the machine's MemAvailable exceeds its estimated need by this")
    ap.add_argument("--mem-wait", type=float, default=1200.0, help="seconds to wait for that memory, then skip")
    ap.add_argument("--out", default="results/bench_itra.md")
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-storage", help=argparse.SUPPRESS)
    ap.add_argument("--child-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_n:
        return child(args)

    sizes = [int(x) for x in args.sizes.split(",") if x]
    only = [int(x) for x in args.blocked_only.split(",") if x]
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    out(f"## Selection at scale: N x {args.n_val:,} validation, {args.dim}-d, n = {args.n}, lambda = {args.lam}, "
        f"max_iters {args.iters}, cut_num {args.cut_num}, tight ({time.strftime('%Y-%m-%d %H:%M')})")
    out("")
    out(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        "1 torch thread, numba single-threaded; each run in its own process")
    tmp = tempfile.mkdtemp(prefix="bench_scale_")
    it_only = args.iters if args.blocked_only_iters is None else args.blocked_only_iters
    runs = ([(N, "dense", args.iters) for N in sizes] + [(N, "blocked", args.iters) for N in sizes]
            + [(N, "blocked", it_only) for N in only if N not in sizes])
    runs.sort(key=lambda r: (r[0], r[1] != "dense"))
    if it_only != args.iters:
        out(f"- max_iters {args.iters} for the sizes run with both storages, {it_only} for the blocked-only sizes")
    res = {}
    for N, storage, iters in runs:
        gib = 4.0 * N * args.n_val / 2**30
        if storage == "dense" and gib > args.dense_max_gib:
            res[(N, storage)] = {"skipped": f"matrix {gib:.1f} GiB > {args.dense_max_gib} GiB"}
            out(f"- N = {N:,}, dense: not run (the float32 matrix alone is {gib:.1f} GiB)")
            continue
        need = _need_gib(N, storage, args)
        waited = 0.0
        while _mem_available_gib() < need + args.mem_margin_gib and waited < args.mem_wait:
            time.sleep(30)
            waited += 30
        avail = _mem_available_gib()
        if avail < need + args.mem_margin_gib:
            res[(N, storage)] = {"skipped": f"needs ~{need:.1f} GiB, {avail:.1f} GiB available"}
            out(f"- N = {N:,}, {storage}: not run: it needs about {need:.1f} GiB and the machine had {avail:.1f} GiB "
                f"available (other jobs) after waiting {waited:.0f} s")
            continue
        cmd = [sys.executable, __file__, "--child-n", str(N), "--child-storage", storage, "--child-dir", tmp,
               "--n-val", str(args.n_val), "--dim", str(args.dim), "--clusters", str(args.clusters), "--n",
               str(args.n), "--lam", str(args.lam), "--iters", str(iters), "--cut-num", str(args.cut_num),
               "--seed", str(args.seed)]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            res[(N, storage)] = {"failed": p.stderr[-2000:]}
            out(f"- N = {N:,}, {storage}: FAILED (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
            continue
        with open(Path(tmp) / f"{N}_{storage}.json") as f:
            r = json.load(f)
        res[(N, storage)] = r
        b = r.get("blocked") or {}
        extra = ""
        if b:
            extra = (f"; pool {b['pool_rows']:,} rows ({b['per_column']} per column), check rounds "
                     f"{b['check_rounds']}, rows added by the check {b['rows_added']}, exact evaluations in the "
                     f"checks {b['check_evals_greedy']:,} greedy / {b['check_evals_outer']:,} outer; passes: range "
                     f"{b['pass_range_s']:.0f} s, pool {b['pass_pool_s']:.0f} s, check "
                     + ", ".join(f"{v:.0f} s" for k, v in b.items() if k.startswith("pass_check")))
        out(f"- N = {N:,}, {storage}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU (cost "
            f"{r['time_cost_s']:.0f} s, greedy {r['time_greedy_s']:.0f} s, refine {r['time_refine_s']:.0f} s); peak "
            f"RSS {r['peak_gib']:.2f} GiB (instance and interpreter before the selection: {r['base_gib']:.2f} GiB); "
            f"POO greedy {r['poo_greedy']:.6f}, final {r['poo_final']:.6f} after {r['accepted']}{extra} "
            f"[child wall incl. instance: {time.perf_counter() - t:.0f} s]")
    out("")
    out("| N | max_iters | dense: wall s | dense: CPU s | dense: peak GiB | blocked: wall s | blocked: CPU s | "
        "blocked: peak GiB | blocked pool rows | same indices |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    iters_of = {r[0]: r[2] for r in runs}
    for N in sorted({r[0] for r in runs}):
        d, b = res.get((N, "dense"), {}), res.get((N, "blocked"), {})

        def cell(r, key, fmt):
            if "skipped" in r:
                return "not run"
            if "failed" in r:
                return "failed"
            return fmt.format(r[key]) if key in r else "-"

        same = "-"
        if "wall_s" in d and "wall_s" in b:
            a1 = np.load(Path(tmp) / f"{N}_dense.npy")
            a2 = np.load(Path(tmp) / f"{N}_blocked.npy")
            same = "yes" if np.array_equal(a1, a2) else f"NO ({len(np.setdiff1d(a1, a2))} differ)"
        pool = f"{b['blocked']['pool_rows']:,}" if b.get("blocked") else "-"
        out(f"| {N:,} | {iters_of[N]} | {cell(d, 'wall_s', '{:.0f}')} | {cell(d, 'cpu_s', '{:.0f}')} | {cell(d, 'peak_gib', '{:.2f}')} | "
            f"{cell(b, 'wall_s', '{:.0f}')} | {cell(b, 'cpu_s', '{:.0f}')} | {cell(b, 'peak_gib', '{:.2f}')} | {pool} | "
            f"{same} |")
    out("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
