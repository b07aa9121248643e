"""The real-data study's report (issue 16, profile real_cpu). First archives the small files of every run finished
under outputs/ into results/real_games/runs/ (committed: goracs/report/archive.py), then, from that archive alone,
writes into results/real_games/ the pilot table, the CTR and SeqRec tables (intervals, paired differences to random),
the lambda and budget sweeps, the proxy check (Spearman with its interval) and the jobs' wall and CPU times.
Rows say how many seeds they have, so a partial study reports what it has.

  .venv/bin/python scripts/real_games_report.py            (bash scripts/real_games.sh report)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from goracs.io import write_text  # noqa: E402
from goracs.report.archive import CORESET_FILE, archive_runs  # noqa: E402
from goracs.report import plots  # noqa: E402
from goracs.report.aggregate import (collect, load_predictions, paired_vs, provenance, sample_metric,  # noqa: E402
                                     task_runs, write_tables)
from goracs.report.stats import bootstrap_ci, mean_ci, paired_difference, spearman_ci  # noqa: E402


def pilot_table(root: Path) -> str:
    runs = collect([root]) if root.exists() else pd.DataFrame()
    if runs.empty:
        return "No pilot runs yet.\n"
    lines = ["| run | coreset | AUC [95 % bootstrap over test samples] | log-loss | optimizer steps | best val loss "
             "| wall s as built | CPU s as built |", "|---|---|---|---|---|---|---|---|"]
    for r in runs.sort_values("budget").to_dict("records"):
        info = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        tr = info.get("train_report") or {}
        steps = tr.get("steps")
        label = "zero-shot (no fine-tuning)" if steps == 0 else (
            "whole pool" if r["selector"] == "full" else f"{r['selector']}")
        pred = load_predictions(r["run_dir"])
        if pred and pred.get("p_yes"):
            v, lo, hi = bootstrap_ci(pred["labels"], pred["p_yes"])
            auc = f"{v:.4f} [{lo:.4f}, {hi:.4f}]"
        else:
            auc = f"{r['auc']:.4f}"
        wall, cpu = job_cost(r["run_dir"])  # its stages as built, not a re-run's seconds from the cache
        cost = ("not recorded | not recorded" if np.isnan(wall) else f"{wall:.0f} | {cpu:.0f}")
        lines.append(f"| {label} | {'-' if steps == 0 else int(r['budget'])} | {auc} | {r['logloss']:.4f} | {steps} | "
                     f"{tr.get('best_val_loss') if tr.get('best_val_loss') is None else round(tr['best_val_loss'], 4)}"
                     f" | {cost} |")
    return (provenance(runs, [root]) + "\n".join(lines) + "\n\nA cost 'not recorded' is a run that found its stages "
            "cached before stage times were recorded (its first run's log has the cost).\n")


def seqrec_control_table(root: Path, table: pd.DataFrame) -> str:
    """The SeqRec control (no fine-tuning) next to the table (its runs, as collected): HR / NDCG at 5 and 10 with
    bootstrap intervals over test samples, and the share of test samples whose target rank equals a fine-tuned
    table run's of the same seed."""
    runs = collect([root]) if root.exists() else pd.DataFrame()
    if runs.empty:
        return "No SeqRec control runs yet.\n"
    if not table.empty:
        table = table[table["task"] == "seqrec"]
    lines = ["| run | HR@5 | HR@10 | NDCG@5 | NDCG@10 | same target rank as the fine-tuned runs of its seed |",
             "|---|---|---|---|---|---|"]
    for r in runs.sort_values("seed").to_dict("records"):
        pred = load_predictions(r["run_dir"])
        rank = np.asarray(pred["rank"], dtype=float)
        cells = []
        for name in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
            v, lo, hi = bootstrap_ci(rank, rank, metric=sample_metric(name))
            cells.append(f"{v:.4f} [{lo:.4f}, {hi:.4f}]")
        same = []
        for t in (table[table["seed"] == r["seed"]].to_dict("records") if not table.empty else []):
            other = load_predictions(t["run_dir"])
            if other and other.get("ids") == pred.get("ids"):
                same.append(f"{t['selector']} {np.mean(np.asarray(other['rank']) == rank):.0%}")
        tr = json.loads((Path(r["run_dir"]) / "metrics.json").read_text()).get("train_report") or {}
        label = "zero-shot (no fine-tuning)" if tr.get("steps") == 0 else r["selector"]
        lines.append(f"| {label}, seed {int(r['seed'])} | " + " | ".join(cells) + f" | {', '.join(same) or '-'} |")
    return provenance(runs, [root]) + "\n".join(lines) + "\n" + _finetune_gain(runs, table)


def _finetune_gain(control: pd.DataFrame, table: pd.DataFrame) -> str:
    """What fine-tuning on a coreset adds to the base model: each SeqRec table row (mean over its seeds) minus the
    control (mean over its seeds), on the same test samples, with the paired bootstrap interval over them."""
    names = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
    base = [load_predictions(d) for d in control["run_dir"]]
    if table.empty or any(b is None for b in base) or len({json.dumps(b.get("ids")) for b in base}) != 1:
        return ""
    ids, base_ranks = base[0].get("ids"), [np.asarray(b["rank"], dtype=float) for b in base]
    lines = ["", "Each fine-tuned row minus the control (mean over each one's seeds), on the same test samples, with "
             "the 95 % paired bootstrap interval over them:", "",
             "| fine-tuned row (seeds) | " + " | ".join(f"Δ{n.upper()}" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    table = task_runs(table, "seqrec")  # one run per row x seed, the newest
    lams = table.groupby("selector")["lam"].nunique() if not table.empty else None
    for (sel, b, lam), part in table.groupby(["selector", "budget", "lam"]) if not table.empty else []:
        preds = [load_predictions(d) for d in part["run_dir"]]
        if any(q is None or q.get("ids") != ids for q in preds):
            continue
        ranks = [np.asarray(q["rank"], dtype=float) for q in preds]
        cells = []
        for n in names:
            d, lo, hi = paired_difference(np.zeros(len(base_ranks[0])), ranks, base_ranks, metric=sample_metric(n))
            cells.append(f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" + (" *" if lo > 0 or hi < 0 else ""))
        seeds = ",".join(str(int(v)) for v in sorted(part["seed"]))
        name = sel if lams[sel] == 1 else f"{sel} (lambda {lam})"
        lines.append(f"| {name} {int(b)} ({seeds}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 5 else ""


def job_cost(run_dir: str) -> tuple[float, float]:
    """(wall s, CPU s) that a run's results cost to compute: the sum of its stages' build times when the run
    records them (a job that found its adapter and evaluation cached took seconds itself), else the job's own."""
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    st = m.get("stage_seconds") or {}
    if st.get("train_cpu") is not None and st.get("evaluate_cpu") is not None:
        extra = (st.get("select") or 0.0) + (st.get("proxy_wall") or 0.0)
        return (st["train_wall"] + st["evaluate_wall"] + extra, st["train_cpu"] + st["evaluate_cpu"] + extra)
    # A run written before stage times were recorded that found its stages cached (its adapter flagged cached, or
    # the whole job under a minute: no CTR evaluation of the real test set takes that little) cost an unknown amount.
    if m.get("train_cached") or (m.get("train_report") or {}).get("cached") or m.get("wall_seconds", 0) < 60:
        return np.nan, np.nan
    return float(m.get("wall_seconds", np.nan)), float(m.get("cpu_seconds", np.nan))


def times_table(runs: pd.DataFrame) -> str:
    if runs.empty or "wall_seconds" not in runs:
        return "No runs yet.\n"
    runs = runs.copy()
    # an evaluation of the base model (no optimizer step) is its own row, not a job of the selector it names
    zero = [((json.loads((Path(d) / "metrics.json").read_text()).get("train_report") or {}).get("steps") == 0)
            for d in runs["run_dir"]]
    runs["selector"] = np.where(zero, "zero-shot (" + runs["selector"].astype(str) + ")", runs["selector"])
    cost = [job_cost(d) for d in runs["run_dir"]]
    runs["wall_seconds"] = [c[0] for c in cost]
    runs["cpu_seconds"] = [c[1] for c in cost]
    cols = {"wall_seconds": "wall s", "cpu_seconds": "CPU s"}
    g = runs.groupby(["task", "selector", "budget"])[[c for c in cols if c in runs]].agg(["mean", "count"])
    lines = ["| task | selector | budget | jobs | mean wall s | mean CPU s |", "|---|---|---|---|---|---|"]
    sizes = runs.groupby(["task", "selector", "budget"]).size()
    for (task, sel, b), row in g.iterrows():
        cpu = row[("cpu_seconds", "mean")] if ("cpu_seconds", "mean") in row else float("nan")
        known, n = int(row[("wall_seconds", "count")]), int(sizes[(task, sel, b)])
        jobs = f"{n}" if known == n else f"{n} ({known} with a recorded cost)"
        wall = "not recorded" if known == 0 else f"{row[('wall_seconds', 'mean')]:.0f}"
        lines.append(f"| {task} | {sel} | {int(b)} | {jobs} | {wall} | "
                     f"{'not recorded' if known == 0 else f'{cpu:.0f}'} |")
    known = runs["wall_seconds"].notna()
    total_wall = runs["wall_seconds"].sum() / 3600
    total_cpu = runs["cpu_seconds"].sum() / 3600
    missing = "" if known.all() else (f" {int((~known).sum())} jobs were re-run from stages cached before stage "
                                      "times were recorded, so their cost is not known to the report (the earlier "
                                      "numbers.md in git history has it) and is left out of the total.")
    return ("\n".join(lines) + f"\n\n{int(known.sum())} jobs with a recorded cost: {total_wall:.1f} h wall, "
            f"{total_cpu:.1f} CPU-hours (each job's stages as built; signals shared by the pool are not included; "
            "wall time includes waiting for the other job on the 2 cores)." + missing + "\n")


def reference_by_seed(df: pd.DataFrame, reference: str = "random", metric: str = "auc") -> pd.Series:
    """The reference row's metric per (budget, seed): what each selector's run is differenced against."""
    return df[df["selector"] == reference].groupby(["budget", "seed"])[metric].mean()


def seed_differences(part: pd.DataFrame, ref: pd.Series, budget, metric: str = "auc") -> dict[int, float]:
    """{seed: the row's metric minus the reference's at the same budget and seed}, over the seeds both have."""
    return {int(s): float(v) - float(ref[(budget, s)]) for s, v in part.groupby("seed")[metric].mean().items()
            if (budget, s) in ref.index}


def fmt_ci(m: float, lo: float, hi: float, sign: str = "+") -> str:
    """'m [lo, hi]', or 'm' alone where there is no interval (a single seed)."""
    return f"{m:{sign}.4f}" if np.isnan(lo) else f"{m:{sign}.4f} [{lo:{sign}.4f}, {hi:{sign}.4f}]"


def seed_paired(runs: pd.DataFrame, task: str = "ctr", metric: str = "auc", reference: str = "random",
                rows: list | None = None) -> str:
    """Each selector minus random, seed by seed (the same fine-tuning seed), with a t interval over the seeds: the
    between-fine-tune view of the difference, next to the table's bootstrap over test samples (which holds the
    fine-tunes fixed). With 3 seeds the interval is wide (t 4.30): a difference it excludes 0 for is robust to the
    fine-tuning seed as well as to the test sample. Also: the seeds on which the selector is above random, and the
    two-sided p of the Wilcoxon signed-rank test on the per-seed differences (exact; no normality assumed; with 3
    seeds it cannot go below 0.25, with 8 it can reach 0.008); the spread of the metric over the same seeds for
    both, and the p of Levene's test (median-centred: Brown-Forsythe) that the two spreads are equal (approximate: it
    treats the two rows' seeds as independent, though they share the fine-tuning seed)."""
    if runs.empty:
        return "No runs yet.\n"
    df = task_runs(runs, task)  # one run per row x seed (the newest), lam "-" for selectors without one
    if df.empty:
        return "No runs yet.\n"
    ref = reference_by_seed(df, reference, metric)
    if ref.empty:
        return f"No {reference} runs yet.\n"
    lines = [f"| selector | budget | {metric.upper()} minus {reference}, per seed | mean [95 % t over seeds] | "
             f"seeds above {reference} | Wilcoxon p | SD over seeds ({reference}'s) | Levene p |",
             "|---|---|---|---|---|---|---|---|"]
    others = df[df["selector"] != reference]
    lams = others.groupby("selector")["lam"].nunique()
    for (sel, b, lam), part in others.groupby(["selector", "budget", "lam"]):
        name = sel if lams[sel] == 1 else f"{sel} (lambda {lam})"  # named by lambda where a selector has several
        budgets = ref.index.get_level_values(0)
        rb = b if b in budgets else budgets.value_counts().idxmax()  # the full row: random at the table's budget
        d = seed_differences(part, ref, rb, metric)
        if not d:
            continue
        m, lo, hi = mean_ci(list(d.values()))
        per = ", ".join(f"{s}: {v:+.4f}" for s, v in sorted(d.items()))
        ci = fmt_ci(m, lo, hi)
        v = np.array(list(d.values()))
        p = float(stats.wilcoxon(v).pvalue) if np.count_nonzero(v) > 0 and len(v) > 1 else float("nan")
        theirs = np.array([float(ref[(rb, s)]) for s in d])
        mine = theirs + v  # the row's own metric at those seeds
        sd = f"{np.std(mine, ddof=1):.4f} ({np.std(theirs, ddof=1):.4f})" if len(v) > 1 else "-"
        lev = float(stats.levene(mine, theirs).pvalue) if len(v) > 2 else float("nan")
        lines.append(f"| {name} | {int(b)} | {per} | {ci} | {int((v > 0).sum())} of {len(v)} | "
                     f"{'-' if np.isnan(p) else f'{p:.3f}'} | {sd} | {'-' if np.isnan(lev) else f'{lev:.3f}'} |")
        if rows is not None:
            rows.append({"label": f"{name} ({int(b)})", "view": "seed by seed (t over seeds)", "diff": m, "lo": lo,
                         "hi": hi})
    return "\n".join(lines) + "\n"


def coreset_classes(runs: pd.DataFrame, task: str = "ctr") -> dict[str, tuple[int, int, float]]:
    """{run folder: (positives, coreset size, the pool's positive share)} of each CTR run's coreset, from its coreset
    indices and the pool its recorded config draws (the prepared samples come from the cache; each distinct pool is
    loaded once). A run whose pool cannot be loaded (e.g. its data is gone) is left out, with a warning."""
    from omegaconf import OmegaConf

    from goracs.pipeline import pool, run_prepare

    if runs.empty or "coreset" not in runs:
        return {}
    labels: dict[str, np.ndarray] = {}
    out = {}
    for r in runs[(runs["task"] == task) & runs["coreset"].notna()].to_dict("records"):
        m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        idx_path = coreset_file(r)
        if "dataset" not in (m.get("config") or {}) or not idx_path.exists():
            continue
        cfg = OmegaConf.create(m["config"])
        cfg.progress = False
        c = m["config"]  # what the pool depends on: the prepared samples' inputs, the caps and the data seed
        pk = json.dumps({k: c.get(k) for k in ("dataset", "task", "prompt", "data_seed")}, sort_keys=True, default=str)
        if pk not in labels:
            try:
                labels[pk] = pool(cfg, run_prepare(cfg))["train"]["label"].to_numpy()
            except Exception as e:  # a report must not fail on one old run's missing data
                print(f"warning: {r['run_dir']}: its pool could not be loaded ({e}); its coreset is not counted",
                      file=sys.stderr)
                labels[pk] = None
        y = labels[pk]
        if y is None:
            continue
        idx = np.load(idx_path)
        out[r["run_dir"]] = (int((y[idx] == 1).sum()), len(idx), float((y == 1).mean()))
    return out


def coreset_positives(runs: pd.DataFrame, classes: dict, task: str = "ctr") -> str:
    """How many positive ("Yes") samples each CTR coreset holds, per row (lambdas apart) and seed, next to the pool's
    share."""
    counts: dict[tuple, dict[int, tuple[int, int]]] = {}
    shares = set()
    for r in task_runs(runs, task).to_dict("records") if not runs.empty else []:
        if r["run_dir"] in classes:
            k, n, share = classes[r["run_dir"]]
            shares.add(round(share, 2))
            counts.setdefault((r["selector"], int(r["budget"]), str(r["lam"])), {})[int(r["seed"])] = (k, n)
    if not counts:
        return ""
    pool_share = ", ".join(f"{v:.0%}" for v in sorted(shares))
    lines = [f"Positives in each coreset (the pool: {pool_share} positive):", "",
             "| selector | budget | lambda | positives of the coreset, per seed |", "|---|---|---|---|"]
    for (sel, b, lam), per in sorted(counts.items()):
        lines.append(f"| {sel} | {b} | {lam} | "
                     + ", ".join(f"{s}: {k} of {n}" for s, (k, n) in sorted(per.items())) + " |")
    return "\n".join(lines) + "\n"


def differences_figure(res: Path, seed_rows: list, out: Path, metric: str = "auc", task: str = "ctr") -> str:
    """figures/<task>_<metric>_diff_vs_random.png (e.g. ctr_auc_..., seqrec_hr10_...): each selector minus random,
    both views (the table's paired bootstrap over test samples, and seed by seed with a t interval over seeds)."""
    csv = res / f"table_{task}.csv"
    rows = list(seed_rows)
    budgets = set()
    if csv.exists() and csv.read_text().strip():  # a task without runs has an empty table
        t = pd.read_csv(csv)
        if f"{metric}_diff" in t:
            for _, r in t.dropna(subset=[f"{metric}_diff"]).iterrows():
                budgets.add(int(r["reference_budget"]) if "reference_budget" in r else int(r["budget"]))
                rows.append({"label": f"{r['selector']} ({int(r['budget'])})", "view": "over test samples (bootstrap)",
                             "diff": r[f"{metric}_diff"], "lo": r[f"{metric}_diff_lo"], "hi": r[f"{metric}_diff_hi"]})
    if not rows:
        return ""
    name = metric.replace("@", "")
    at = f", budget {', '.join(map(str, sorted(budgets)))}" if budgets else ""
    path = plots.differences(pd.DataFrame(rows), out / f"{task}_{name}_diff_vs_random.png",
                             f"{metric.upper()} minus random's (95 % intervals)",
                             f"real Games {'CTR' if task == 'ctr' else 'SeqRec'}{at}: each selector against random")
    return f"Figure: `figures/{path.name}`.\n"


def lambda_curve(runs: pd.DataFrame) -> pd.DataFrame:
    """GORACS's CTR runs at budget 64 for every lambda, one per (lambda, seed): the sweep's lambdas and the table's
    goracs (0.5) and goracs_lam0 (0) rows, all under the name goracs."""
    if runs.empty:
        return runs
    ctr = runs[(runs["task"] == "ctr") & (runs["budget"] == 64) & runs["selector"].isin(["goracs", "goracs_lam0"])]
    ctr = ctr.assign(selector="goracs", lam=ctr["lam"].astype(float))
    if "_mtime" in ctr:  # a job found in two folders (a table row in a sweep) counts once, at its newest run
        ctr = ctr.sort_values("_mtime", kind="stable")
    return ctr.drop_duplicates(subset=["dataset", "lam", "seed"], keep="last")


def lambdas_at_common_seeds(lam: pd.DataFrame) -> str:
    """Do the lambdas differ at all? Each lambda's mean AUC over the seeds every lambda has (a fair side-by-side where
    some lambdas have more seeds), and the Friedman test across the lambdas, blocked by seed (rank-based: the
    fine-tuning seed moves every lambda's AUC together). Needs 3 or more lambdas and 2 or more common seeds."""
    by = lam.pivot_table(index="seed", columns="lam", values="auc", aggfunc="mean").dropna()
    if by.shape[1] < 3 or by.shape[0] < 2:
        return ""
    res = stats.friedmanchisquare(*(by[c].to_numpy(float) for c in by.columns))
    means = ", ".join(f"{c}: {by[c].mean():.4f}" for c in by.columns)
    seeds = ", ".join(str(int(v)) for v in by.index)
    return (f"At the seeds every lambda has ({seeds}), mean AUC by lambda: {means}. Friedman test across the "
            f"{by.shape[1]} lambdas, blocked by seed: chi-square {res.statistic:.2f}, p {res.pvalue:.3f}.")


def sweep_vs_random(runs: pd.DataFrame, what: str) -> str:
    """Each sweep point (selector x budget x lambda) minus random at the same budget and seeds, two ways: seed by
    seed (t interval over the seeds both have) and over test samples (paired bootstrap, the fine-tunes fixed)."""
    df = task_runs(runs, "ctr")
    if df.empty or not (df["selector"] == "random").any():
        return ""
    test = paired_vs(runs, "ctr", ["auc"])
    lines = [f"{what} minus random at the same budget and seeds (AUC):", "",
             "| selector | budget | lambda | seeds | seed by seed [95 % t] | over test samples [95 % bootstrap] |",
             "|---|---|---|---|---|---|"]
    ref = reference_by_seed(df)
    for (sel, b, lam), part in df[df["selector"] != "random"].groupby(["selector", "budget", "lam"]):
        d = list(seed_differences(part, ref, b).values())
        if not d:
            continue
        seedwise = fmt_ci(*mean_ci(d))
        t = test[(test["selector"] == sel) & (test["budget"] == b) & (test["lam"] == lam)] if not test.empty else test
        over = "-" if t.empty else fmt_ci(*(t[c].iloc[0] for c in ("auc_diff", "auc_diff_lo", "auc_diff_hi")))
        lines.append(f"| {sel} | {int(b)} | {lam} | {len(d)} | {seedwise} | {over} |")
    return "\n".join(lines) if len(lines) > 4 else ""


def sweeps(sweep: pd.DataFrame, out: Path, root: Path, table: pd.DataFrame | None = None,
           recorded: pd.DataFrame | None = None) -> list[str]:
    """The lambda and budget sweeps: each point's AUC over its seeds and minus random; headed by where the sweep's
    own runs come from (seeds, commit and command per point; the points taken from the table, lambda 0 and 0.5 at
    64, and random 64, are the CTR table's runs, whose provenance table_ctr.md gives). With `recorded` (the per-seed
    AUCs of runs whose folders were lost, `load_recorded`), the budget sweep reads the archived runs and those."""
    if sweep.empty:
        if recorded is not None and not recorded.empty:  # the lost runs' values still make a budget sweep
            return budget_with_recorded(sweep, recorded, out) or ["No sweep runs yet."]
        return ["No sweep runs yet."]
    notes = [provenance(sweep, [root], by_row="ctr").rstrip()]
    if table is not None and not table.empty:
        notes.append("Lambda 0 and 0.5 at budget 64, and random 64, are the CTR table's runs "
                     "(table_ctr.md names them).")
    ctr = sweep[sweep["task"] == "ctr"]
    pool = pd.concat([sweep, table]) if table is not None and not table.empty else sweep
    lam = lambda_curve(pool)
    if lam["lam"].nunique() > 1:
        # random at the same budget (64), from the table: the line every lambda is read against
        rnd = task_runs(pool, "ctr")
        rnd = rnd[(rnd["selector"] == "random") & (rnd["budget"] == 64)]
        band = None
        if not rnd.empty:
            m, lo, hi = mean_ci(rnd["auc"].to_numpy(float))
            band = (f"random 64 ({len(rnd)} seeds; its 95 % t interval shaded)", m, lo, hi)
        plots.metric_vs(lam, "lam", "auc", out / "ctr_auc_vs_lambda.png", "real Games CTR: GORACS AUC against lambda",
                        reference=band)
        rows = []
        for v, part in lam.groupby("lam"):
            rows.append(f"| {v} | {fmt_ci(*mean_ci(part['auc'].to_numpy(float)), sign='')} | {len(part)} |")
        notes.append("| lambda | AUC [95 % t over seeds] | seeds |\n|---|---|---|\n" + "\n".join(rows))
        same = lambdas_at_common_seeds(lam)
        if same:
            notes.append(same)
        versus = sweep_vs_random(pd.concat([lam, rnd]) if not rnd.empty else lam, "GORACS at each lambda")
        if versus:
            notes.append(versus)
    bud = ctr[(ctr["selector"] == "random") | ((ctr["selector"] == "goracs") & (ctr["lam"].astype(float) == 0.5))]
    notes.extend(budget_with_recorded(bud, recorded, out))
    if bud["budget"].nunique() > 1:  # the archived runs' differences over test samples too (recorded have none)
        versus = sweep_vs_random(bud, "GORACS (lambda 0.5) at each budget, archived runs only")
        if versus:
            notes.append(versus)
    return notes


RECORDED_COLUMNS = ["task", "selector", "budget", "lam", "seed", "auc", "source"]


def load_recorded(path: Path, required: bool = False) -> pd.DataFrame:
    """Per-seed AUCs of runs whose folders are gone, as the study's earlier reports recorded them (a CSV with
    RECORDED_COLUMNS; `source` says where each value was read). An empty frame when the file is absent, unless
    `required` (a path the user named). A missing column, a budget or seed that is not an integer, an AUC that is
    not a number, or a job (task, selector, budget, lambda, seed) listed twice is an error naming the file, line and
    field."""
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path}: no such file (--recorded)")
        return pd.DataFrame(columns=RECORDED_COLUMNS)
    import csv

    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in RECORDED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(RECORDED_COLUMNS)})")
        rows, seen = [], {}
        for row in reader:
            line = reader.line_num
            if not any((v or "").strip() for v in row.values()):
                continue
            out = {"task": row["task"], "selector": row["selector"], "source": row["source"],
                   "lam": row["lam"].strip() or "-"}
            for col, kind in (("budget", int), ("seed", int), ("auc", float)):
                try:
                    out[col] = kind(row[col])
                except (TypeError, ValueError):
                    what = "an integer" if kind is int else "a number"
                    raise ValueError(f"{path}: line {line}, field {col}: {row[col]!r} is not {what}") from None
            key = (out["task"], out["selector"], out["budget"], out["lam"], out["seed"])
            if key in seen:
                raise ValueError(f"{path}: line {line} repeats the job of line {seen[key]} {key}")
            seen[key] = line
            rows.append(out)
    return pd.DataFrame(rows, columns=RECORDED_COLUMNS)


def budget_with_recorded(bud: pd.DataFrame, recorded: pd.DataFrame | None, out: Path) -> list[str]:
    """The budget sweep (GORACS at lambda 0.5 and random, CTR) from the archived runs and the recorded per-seed AUCs
    of lost ones (None or empty: the runs alone): where a point and seed has both, the archived run counts and the two are printed side by side (a
    re-run of a recorded job is a check that the study reproduces); each point's mean [95 % t over seeds] with where
    its seeds come from; GORACS minus random at each budget, seed by seed; the figure."""
    runs = task_runs(bud, "ctr") if not bud.empty else pd.DataFrame(columns=["selector", "budget", "seed", "auc"])
    runs = runs[["selector", "budget", "seed", "auc"]].assign(source="archived run")
    recorded = recorded if recorded is not None else pd.DataFrame(columns=RECORDED_COLUMNS)
    rec = recorded[(recorded["task"] == "ctr") & ((recorded["selector"] == "random") | (
        (recorded["selector"] == "goracs") & (pd.to_numeric(recorded["lam"], errors="coerce") == 0.5)))]
    key = ["selector", "budget", "seed"]
    both = rec.merge(runs, on=key, suffixes=("_recorded", "_rerun"))
    notes = []
    if not both.empty:
        lines = ["Re-runs of recorded jobs (the same config from a fresh clone; the recorded value as the earlier "
                 "report printed it):", "", "| selector | budget | seed | recorded AUC (3 decimals) | re-run AUC | re-run minus recorded |",
                 "|---|---|---|---|---|---|"]
        for _, r in both.sort_values(key).iterrows():
            lines.append(f"| {r['selector']} | {int(r['budget'])} | {int(r['seed'])} | {r['auc_recorded']:.3f} | "
                         f"{r['auc_rerun']:.4f} | {r['auc_rerun'] - r['auc_recorded']:+.3f} |")
        notes.append("\n".join(lines))
    extra = rec.merge(runs[key], on=key, how="left", indicator=True)  # recorded jobs with no archived run
    extra = extra[extra["_merge"] == "left_only"]
    pool = pd.concat([runs, extra[key + ["auc", "source"]]], ignore_index=True)
    pool["budget"], pool["seed"] = pool["budget"].astype(int), pool["seed"].astype(int)
    if pool["budget"].nunique() < 2:
        return notes
    plots.metric_vs(pool, "budget", "auc", out / "ctr_auc_vs_budget.png",
                    "real Games CTR: AUC against budget (GORACS lambda 0.5, random)")
    rows = []
    for (sel, b), part in pool.groupby(["selector", "budget"]):
        n_run = int((part["source"] == "archived run").sum())
        whence = ", ".join(x for x in (f"{n_run} archived" if n_run else "",
                                       f"{len(part) - n_run} recorded" if len(part) > n_run else "") if x)
        seeds = ", ".join(f"{int(s)}: {a:.3f}" for s, a in sorted(zip(part["seed"], part["auc"])))
        rows.append(f"| {sel} | {b} | {seeds} | {fmt_ci(*mean_ci(part['auc'].to_numpy(float)), sign='')} | {whence} |")
    notes.append("Budget sweep, archived runs and recorded values together (GORACS at lambda 0.5):\n\n"
                 "| selector | budget | AUC per seed | mean [95 % t over seeds] | from |\n|---|---|---|---|---|\n"
                 + "\n".join(rows))
    ref = reference_by_seed(pool)
    lines, every = [], []
    for b, part in pool[pool["selector"] == "goracs"].groupby("budget"):
        d = seed_differences(part, ref, b)
        if not d:
            continue
        every.extend(d.values())
        per = ", ".join(f"{s}: {v:+.3f}" for s, v in sorted(d.items()))
        above = sum(v > 0 for v in d.values())
        lines.append(f"| {b} | {per} | {fmt_ci(*mean_ci(list(d.values())))} | {above} of {len(d)} |")
    if lines:
        text = ("GORACS minus random at each budget, seed by seed (AUC):\n\n"
                "| budget | per seed | mean [95 % t over seeds] | seeds above random |\n|---|---|---|---|\n"
                + "\n".join(lines))
        if len(lines) > 1:  # every (budget, seed) pair as one paired difference: the sweep's overall question
            p = stats.wilcoxon(every).pvalue if len(every) > 1 and any(every) else float("nan")
            text += (f"\n\nAll {len(lines)} budgets together, {len(every)} (budget, seed) pairs, each a separate pair "
                     f"of fine-tunes: {fmt_ci(*mean_ci(every))} [95 % t over the pairs], above random in "
                     f"{sum(v > 0 for v in every)} of {len(every)}, Wilcoxon signed-rank p {p:.3f}.")
        notes.append(text)
    return notes


def coreset_file(run) -> Path:
    """A run's coreset indices: the archived copy in its folder, else the cache file its metrics name."""
    here = Path(str(run.get("run_dir") or "")) / CORESET_FILE
    return here if run.get("run_dir") and here.exists() else Path(str(run.get("coreset") or ""))


def subset_id(run: pd.Series) -> str:
    """What a run fine-tuned on: the hash of its sorted coreset indices (`coreset_file`), else its selector, lambda
    and POO."""
    path = coreset_file(run) if isinstance(run.get("coreset"), str) else None
    if path is not None and path.is_file():
        return hashlib.sha1(np.sort(np.load(path)).astype(np.int64).tobytes()).hexdigest()
    lam = "-" if pd.isna(run.get("lam")) else str(run.get("lam"))
    return f"{run['selector']}|{lam}|{run['poo']!r}"


def proxy(runs: pd.DataFrame, out: Path, classes: dict | None = None) -> str:
    if runs.empty or "poo" not in runs:
        return "No proxy-check values yet.\n"
    part = runs[(runs["task"] == "ctr") & (runs["budget"] == 64)].dropna(subset=["poo", "test_loss"])
    # one point per distinct subset: a deterministic selector (GORACS) gives every seed the same coreset, which is
    # then fine-tuned with different seeds; its test loss is the mean over those fine-tunes. Subsets are told apart
    # by their indices (two selectors that chose the same 64 samples are one point).
    def one_class(d):  # True / False, or None where the coreset's classes are not known
        c = (classes or {}).get(d)
        return None if c is None else c[0] in (0, c[1])

    part = part.assign(subset=[subset_id(r) for _, r in part.iterrows()],
                       one_class=[one_class(d) for d in part["run_dir"]])
    part = part.drop_duplicates(["subset", "seed"])  # one fine-tune found in two folders (a table row in a sweep)
    part = part.groupby("subset", as_index=False).agg(selector=("selector", "first"), poo=("poo", "mean"),
                                                      test_loss=("test_loss", "mean"), fine_tunes=("seed", "count"),
                                                      one_class=("one_class", "first"))
    if len(part) < 3:
        return (f"{len(part)} distinct subsets with POO and test loss so far ({int(part['fine_tunes'].sum())} "
                "fine-tunes): too few for a correlation.\n")
    kinds = ["random" if s == "random" else ("GORACS" if str(s).startswith("goracs") else "other selectors")
             for s in part["selector"]]
    plots.proxy_check(part["poo"].to_numpy(float), part["test_loss"].to_numpy(float), kinds,
                      out / "ctr_proxy_check.png")
    rho, lo, hi = spearman_ci(part["poo"].to_numpy(float), part["test_loss"].to_numpy(float))
    rnd = part[part["selector"] == "random"]
    r2 = spearman_ci(rnd["poo"].to_numpy(float), rnd["test_loss"].to_numpy(float)) if len(rnd) >= 3 else None
    text = (f"{len(part)} distinct fine-tuned CTR subsets of 64 (every selector's table runs, the sweeps' runs at 64 "
            f"and the extra random seeds; a subset fine-tuned with several seeds counts once, at its mean test loss): "
            f"Spearman correlation of POO (at lambda 0.5) and test loss {rho:.3f}, 95 % bootstrap interval over "
            f"subsets [{lo:.3f}, {hi:.3f}].")
    if r2 is not None:
        text += (f" Random subsets alone ({len(rnd)}): {r2[0]:.3f} [{r2[1]:.3f}, {r2[2]:.3f}].")
    known = part["one_class"].map(lambda v: v is not None and not pd.isna(v))
    mask = known & part["one_class"].map(lambda v: bool(v) if v is not None and not pd.isna(v) else False)
    two = part[known & ~mask]  # known to hold both classes
    if mask.any() and len(two) >= 3:
        r3 = spearman_ci(two["poo"].to_numpy(float), two["test_loss"].to_numpy(float))
        names = ", ".join(sorted(set(part.loc[mask, "selector"])))
        unknown = f"; {int((~known).sum())} whose classes are not known are left out" if (~known).any() else ""
        text += (f" Without the {int(mask.sum())} subsets that hold one class only ({names}{unknown}) "
                 f"({len(two)} subsets): {r3[0]:.3f} [{r3[1]:.3f}, {r3[2]:.3f}].")
    return text + "\n"


def proxy_origin(runs: pd.DataFrame, root: Path) -> str:
    """Where the proxy check's own random subsets come from (seeds, commit, command); its other points are the table's
    and the sweeps' runs, whose sections name theirs."""
    extra = under(runs, root)
    if extra.empty:
        return ""
    return (provenance(extra, [root]).rstrip() + "\n\nThe other subsets are the CTR table's and the sweeps' runs "
            "(table_ctr.md and the Sweeps section name them).\n\n")


# the study's run folders under outputs/ (configs/experiment/*_real_cpu*.yaml): the archive mirrors these
STUDY_FOLDERS = ("pilot_real_cpu", "pilot_real_cpu_seqrec", "table_real_cpu", "sweep_real_cpu", "proxy_real_cpu")


def under(runs: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The runs whose folder lies under `root` (an empty frame when there are none)."""
    if runs.empty:
        return pd.DataFrame()
    part = runs[[Path(d).is_relative_to(root) for d in runs["run_dir"]]]
    return part.reset_index(drop=True) if not part.empty else pd.DataFrame()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outputs", default=str(ROOT / "outputs"),
                    help="where the jobs ran; their finished runs are archived first (default: outputs/)")
    ap.add_argument("--results", default=str(ROOT / "results" / "real_games"),
                    help="where the report goes; the archive of runs it reads is its runs/ folder")
    ap.add_argument("--recorded", type=Path, default=None,
                    help="per-seed AUCs of lost runs (default: <results>/sessions_1-7/recorded_per_seed_auc.csv)")
    ap.add_argument("--no-archive", action="store_true",
                    help="report from the archive as committed, without copying runs from --outputs into it")
    args = ap.parse_args()
    res = Path(args.results)
    recorded = load_recorded(args.recorded or res / "sessions_1-7" / "recorded_per_seed_auc.csv",
                             required=args.recorded is not None)
    outputs = res / "runs"  # the report reads the archive only: what a fresh clone has is what the tables show
    if not args.no_archive:
        done = archive_runs(args.outputs, outputs, STUDY_FOLDERS)
        print(f"archived the finished runs of {args.outputs} into {outputs}: {done.summary()}")
    figs = res / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    tables = [outputs / "table_real_cpu"]
    all_roots = [p for p in (outputs / "table_real_cpu", outputs / "sweep_real_cpu", outputs / "proxy_real_cpu")
                 if p.exists()]
    # every run is read once, and each section takes its part: a job that finishes while the report writes is in
    # all of its sections or in none
    runs = collect(all_roots) if all_roots else pd.DataFrame()
    table_runs = under(runs, outputs / "table_real_cpu")
    sweep = under(runs, outputs / "sweep_real_cpu")
    if tables[0].exists():
        write_tables(tables, res, runs=table_runs)
    classes = coreset_classes(runs)  # the positives of every CTR coreset (table, sweeps, proxy runs)
    seed_rows: list = []
    seqrec_rows: list = []
    parts = ["# Real Games study: generated numbers", "",
             "Written by `bash scripts/real_games.sh report` from the finished runs archived in `runs/` (each run's "
             "metrics, predictions and run_info, kept since the eighth session); the first seven sessions' runs were "
             "lost with their outputs/ folder, and their numbers are in `sessions_1-7/numbers.md`. The README reads "
             "both.", "",
             "## Pilot", "", pilot_table(outputs / "pilot_real_cpu"),
             "## SeqRec control: no fine-tuning", "",
             seqrec_control_table(outputs / "pilot_real_cpu_seqrec", table_runs),
             "## CTR differences to random, seed by seed", "",
             seed_paired(table_runs, rows=seed_rows),
             differences_figure(res, seed_rows, figs),
             coreset_positives(table_runs, classes),
             "## SeqRec differences to random, seed by seed (HR@10)", "",
             seed_paired(table_runs, task="seqrec", metric="hr@10",
                         rows=seqrec_rows),
             differences_figure(res, seqrec_rows, figs, metric="hr@10", task="seqrec"), "## Sweeps", "",
             "\n\n".join(sweeps(sweep, figs, outputs / "sweep_real_cpu",
                                 table_runs if not table_runs.empty else None, recorded)), "",
             "## Proxy check", "", proxy_origin(runs, outputs / "proxy_real_cpu"), proxy(runs, figs, classes),
             "## Job times", "", times_table(pd.concat([runs, collect([outputs / 'pilot_real_cpu'])])
                                             if (outputs / "pilot_real_cpu").exists() else runs)]
    write_text(res / "numbers.md", "\n".join(parts) + "\n")
    print(f"wrote {res}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
