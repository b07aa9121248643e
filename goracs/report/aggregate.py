"""Aggregate run folders (each holding a metrics.json) into results tables: mean +- std over seeds, best per
column marked."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from goracs.evaluate.metrics import metric, task_metrics
from goracs.io import atomic_path, write_text
from goracs.report.stats import mean_ci
from goracs.tasks import TASKS

log = logging.getLogger(__name__)

GROUP = ["dataset", "task", "selector", "budget", "lam"]


def run_summary(path: Path) -> dict | None:
    """A run's metrics.json as a dict (it names the run's dataset, task and selector); None for a stage artifact of
    the same name. A file that is not valid JSON is an error naming it: a finished run is never written half."""
    try:
        rec = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return rec if isinstance(rec, dict) and {"dataset", "task", "selector"} <= set(rec) else None


def collect(roots: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run summary (metrics.json, `run_summary`) found under the given folders (recursively)."""
    rows = []
    for root in roots:
        for path in sorted(Path(root).rglob("metrics.json")):
            m = run_summary(path)
            if m is None:
                continue  # a stage artifact, not a run summary
            # the metrics this run's own eval config asked for (eval.metrics, eval.ks), in table order
            names = [x.name for x in task_metrics(m["task"], (m.get("config") or {}).get("eval"))]
            rows.append({**{k: v for k, v in m.items() if not isinstance(v, (list, dict))},
                         "run_dir": str(path.parent), "_metrics": ",".join(names), "_mtime": _run_time(path)})
    return pd.DataFrame(rows)


def _run_time(metrics: Path) -> float:
    """When the run that wrote `metrics` started (run_info.json's recorded time, seconds since the epoch), so that a
    run found in two folders counts at its newest run wherever the files were copied to (an archive in git, a fresh
    clone: file times there are checkout times); the file's own time where no run_info.json records one."""
    info = metrics.parent / "run_info.json"
    try:
        rec = json.loads(info.read_text())
    except OSError:
        return metrics.stat().st_mtime
    except json.JSONDecodeError as e:
        raise ValueError(f"{info}: not valid JSON ({e})") from e
    stamp = rec.get("time") if isinstance(rec, dict) else None
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):  # no time recorded (older runs): the file's own
        return metrics.stat().st_mtime


def task_runs(runs: pd.DataFrame, task: str) -> pd.DataFrame:
    """The task's runs, one per row x seed, lam "-" where a selector has none. A job run twice into two folders (a
    re-run under another folder name) counts once, at its newest metrics.json, in the means, the paired
    differences and the bold alike."""
    df = runs[runs["task"] == task].copy() if not runs.empty else pd.DataFrame()
    if df.empty:
        return df
    for col in GROUP:
        if col not in df:
            df[col] = np.nan
    df["lam"] = df["lam"].astype(object).where(df["lam"].notna(), "-")
    if "_mtime" in df:  # collect() records when each metrics.json was written
        df = df.sort_values("_mtime", kind="stable")
    return df.drop_duplicates(GROUP + ["seed"], keep="last")


def table_metrics(runs: pd.DataFrame, task: str) -> list[str]:
    """The metric columns of a task's table: those the runs' eval configs list, in their order, that were
    recorded."""
    if runs.empty or "_metrics" not in runs:
        return [x.name for x in task_metrics(task, None)]
    names: list[str] = []
    for spec in runs.loc[runs["task"] == task, "_metrics"].dropna():
        names += [n for n in str(spec).split(",") if n and n not in names]
    return [n for n in names if n in runs]


def load_predictions(run_dir: str | os.PathLike) -> dict | None:
    """A run's per-test-sample outputs (predictions.json: CTR P(Yes) and labels, SeqRec ranks), or None."""
    path = Path(run_dir) / "predictions.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def sample_metric(name: str):
    """The metric `name` (auc, logloss, accuracy, hr@k, ndcg@k) as f(labels, scores) on per-sample outputs:
    CTR scores are P(Yes), SeqRec scores are the target's 0-based rank (labels unused)."""
    from goracs.report.stats import auc

    fam, _, k = name.lower().partition("@")
    if fam == "auc":
        return auc
    if fam == "logloss":  # auc_logloss's binary log-loss (clipped at 1e-7), in numpy: the bootstraps call it often
        def logloss(y, p):
            q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
            return float(-np.mean(np.where(np.asarray(y) == 1, np.log(q), np.log1p(-q))))
        return logloss
    if fam == "accuracy":
        return lambda y, p: float(((np.asarray(p) >= 0.5).astype(int) == np.asarray(y)).mean())
    if fam in ("hr", "ndcg") and k:
        kk = int(k)
        if fam == "hr":
            return lambda y, r: float((np.asarray(r) < kk).mean())
        return lambda y, r: float(np.where(np.asarray(r) < kk, 1.0 / np.log2(np.asarray(r) + 2.0), 0.0).mean())
    raise ValueError(f"no per-sample form of the metric {name!r}")


def _scores(run_dirs: Iterable[str], task: str) -> tuple[np.ndarray, list[np.ndarray], list] | None:
    """(labels, per-seed scores, sample ids) of a group's runs, aligned on the test samples; None when a run lacks
    its predictions or the runs were tested on different samples."""
    preds = [load_predictions(d) for d in run_dirs]
    if not preds or any(q is None for q in preds):
        return None
    key = "p_yes" if task == "ctr" else "rank"
    if any(q.get(key) is None for q in preds):
        return None
    ids = preds[0].get("ids")
    if any(q.get("ids") != ids or len(q[key]) != len(preds[0][key]) for q in preds):
        return None
    labels = np.asarray(preds[0].get("labels") or np.zeros(len(preds[0][key])), dtype=np.int64)
    return labels, [np.asarray(q[key], dtype=np.float64) for q in preds], ids


def common_seeds(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two rows' runs on the seeds both have (a row part-way through its seeds, or one with extra seeds, is
    compared seed for seed, not with the other row's mean over seeds it lacks); both whole when they share none
    (e.g. rows run at unrelated seeds)."""
    if "seed" not in a or "seed" not in b:
        return a, b
    both = set(a["seed"].dropna()) & set(b["seed"].dropna())
    return (a[a["seed"].isin(both)], b[b["seed"].isin(both)]) if both else (a, b)


def paired_vs(runs: pd.DataFrame, task: str, metrics: list[str], reference: str = "random",
              n_resamples: int = 2000) -> pd.DataFrame:
    """Per dataset x selector x budget x lambda: the paired difference of each metric to `reference` (mean over
    seeds of the selector minus mean over seeds of the reference, on the same test samples) with its 95 %
    bootstrap interval over test samples (goracs.report.stats.paired_difference). The reference is the
    `reference` selector's runs at the same budget, else at its most common budget (e.g. the full-data row against
    random at the table's budget). Empty when the runs carry no per-sample predictions."""
    from goracs.report.stats import paired_difference

    df = task_runs(runs, task)
    rows = []
    if df.empty or "run_dir" not in df:
        return pd.DataFrame()
    for keys, part in df.groupby(GROUP, dropna=False):
        rec = dict(zip(GROUP, keys))
        if rec["selector"] == reference:
            continue
        ref = df[(df["dataset"] == rec["dataset"]) & (df["selector"] == reference)]
        if ref.empty:
            continue
        same = ref[ref["budget"] == rec["budget"]]
        ref = same if not same.empty else ref[ref["budget"] == ref["budget"].mode().iloc[0]]
        part, ref = common_seeds(part, ref)
        rec["paired_seeds"] = ",".join(str(int(v)) for v in sorted(set(part["seed"])))
        a, b = _scores(part["run_dir"], task), _scores(ref["run_dir"], task)
        if a is None or b is None or a[2] != b[2] or len(a[0]) != len(b[0]):
            log.warning("%s %s: no paired difference to %s (a seed without predictions.json, or other test "
                        "samples)", task, _label(rec), reference)
            continue
        rec["reference_budget"] = int(ref["budget"].iloc[0])
        for m in metrics:
            d, lo, hi = paired_difference(a[0], a[1], b[1], metric=sample_metric(m), n_resamples=n_resamples)
            rec.update({f"{m}_diff": d, f"{m}_diff_lo": lo, f"{m}_diff_hi": hi})
        rows.append(rec)
    return pd.DataFrame(rows)


def significant_best(runs: pd.DataFrame, summary: pd.DataFrame, task: str, metrics: list[str],
                     n_resamples: int = 2000) -> dict[tuple[str, str], str | None]:
    """Per (dataset, metric): the row label (selector|budget|lambda) of the best mean when its paired bootstrap
    difference to every other row (each on the seeds both have) excludes 0 in the metric's direction, else None
    (nothing is significantly best). The rows are tested from the runner-up down and the first that does not
    separate ends it, so a table where nothing separates costs one bootstrap. Rows without per-sample predictions:
    the best mean, as before (marked by the caller's note)."""
    from goracs.report.stats import paired_difference

    out: dict[tuple[str, str], str | None] = {}
    df = task_runs(runs, task)
    for ds, part in summary.groupby("dataset"):

        def runs_of(r):
            return df[(df["dataset"] == ds) & (df["selector"] == r["selector"]) & (df["budget"] == r["budget"])
                      & (df["lam"].map(str) == str(r["lam"]))]

        for m in metrics:
            if part[f"{m}_mean"].isna().all():
                continue
            order = part.sort_values(f"{m}_mean", ascending=not metric(m).higher_is_better)
            best = order.iloc[0]
            label = _label(best)
            if len(order) < 2 or np.isclose(best[f"{m}_mean"], order.iloc[1][f"{m}_mean"]):
                out[(ds, m)] = None  # nothing to be better than, or a tie: no best
                continue
            verdict: str | None = label
            for _, other in order.iloc[1:].iterrows():
                da, db = common_seeds(runs_of(best), runs_of(other))
                a, b = _scores(da["run_dir"], task), _scores(db["run_dir"], task)
                if a is None or b is None or a[2] != b[2] or len(a[0]) != len(b[0]):
                    if not (a is None and b is None):
                        verdict = None
                    if a is None and b is None:
                        continue  # no predictions on either side: the best mean stands (the legacy view)
                    break
                _, lo, hi = paired_difference(a[0], a[1], b[1], metric=sample_metric(m), n_resamples=n_resamples)
                # best minus the other: significantly better only in the metric's own direction
                if not (lo > 0 if metric(m).higher_is_better else hi < 0):
                    verdict = None
                    break
            out[(ds, m)] = verdict
    return out


def _label(r) -> str:
    return f"{r['selector']}|{int(r['budget'])}|{r['lam']}"


def summarise(runs: pd.DataFrame, task: str) -> pd.DataFrame:
    """Mean, std and 95 % t interval over seeds of the task's metrics, one row per dataset x selector x budget x
    lambda."""
    metrics = table_metrics(runs, task)
    df = task_runs(runs, task)
    if df.empty:
        return pd.DataFrame()
    agg = {}
    for m in metrics:
        if m in df:
            agg[f"{m}_mean"] = (m, "mean")
            agg[f"{m}_std"] = (m, lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0)
            agg[f"{m}_ci_lo"] = (m, lambda x: mean_ci(x)[1])
            agg[f"{m}_ci_hi"] = (m, lambda x: mean_ci(x)[2])
    agg["seeds"] = ("seed", "nunique")
    agg["seed_list"] = ("seed", lambda x: ",".join(str(int(v)) for v in sorted(set(x))))
    return df.groupby(GROUP, dropna=False).agg(**agg).reset_index()


def to_markdown(summary: pd.DataFrame, task: str, paired: pd.DataFrame | None = None,
                best: dict[tuple[str, str], str | None] | None = None, reference: str = "random") -> str:
    """A markdown table. Without per-sample predictions (`best` None): mean ± std over seeds, the best mean per
    dataset and metric in bold. With them: mean [95 % t interval over seeds], the paired difference to
    `reference` [95 % bootstrap interval over test samples, pooled over seeds] per metric, and bold only where the
    best mean is significantly better than every other row (`best`, from significant_best)."""
    if summary.empty:
        return f"No {task} runs found.\n"
    metrics = [c[:-5] for c in summary.columns if c.endswith("_mean")]
    legacy = best is None
    if legacy:
        best = {}
        for ds, part in summary.groupby("dataset"):
            for m in metrics:
                col = part[f"{m}_mean"]
                v = col.max() if metric(m).higher_is_better else col.min()
                best[(ds, m)] = next((_label(r) for r in part.to_dict("records") if np.isclose(r[f"{m}_mean"], v)),
                                     None)
    diffs = {}
    if paired is not None and not paired.empty:
        for r in paired.to_dict("records"):
            diffs[(r["dataset"], r["selector"], int(r["budget"]), str(r["lam"]))] = r
    head = ["dataset", "selector", "budget", "lambda"] + [metric(m).label for m in metrics]
    if diffs:
        head += [f"Δ{metric(m).label} vs {reference}" for m in metrics]
    head += ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.sort_values(["dataset", "budget", "selector"]).to_dict("records"):
        cells = [str(r["dataset"]), str(r["selector"]), str(int(r["budget"])), str(r["lam"])]
        for m in metrics:
            mean, std = r[f"{m}_mean"], r[f"{m}_std"]
            lo, hi = r.get(f"{m}_ci_lo", np.nan), r.get(f"{m}_ci_hi", np.nan)
            if legacy:
                text = f"{mean:.4f} ± {std:.4f}"
            else:
                text = f"{mean:.4f} [{lo:.4f}, {hi:.4f}]" if np.isfinite(lo) else f"{mean:.4f}"
            cells.append(f"**{text}**" if best.get((r["dataset"], m)) == _label(r) else text)
        if diffs:
            d = diffs.get((r["dataset"], r["selector"], int(r["budget"]), str(r["lam"])))
            for m in metrics:
                if d is None or f"{m}_diff" not in d:
                    cells.append("-")
                    continue
                sig = d[f"{m}_diff_lo"] > 0 or d[f"{m}_diff_hi"] < 0
                text = f"{d[f'{m}_diff']:+.4f} [{d[f'{m}_diff_lo']:+.4f}, {d[f'{m}_diff_hi']:+.4f}]"
                ps = d.get("paired_seeds")
                own = r.get("seed_list")
                text += f" (seeds {ps})" if isinstance(ps, str) and own is not None and ps != own else ""
                cells.append(text + (" *" if sig else ""))
        cells.append(f"{r['seeds']} ({r['seed_list']})" if "seed_list" in r else str(r["seeds"]))
        lines.append("| " + " | ".join(cells) + " |")
    lower = [m for m in metrics if not metric(m).higher_is_better]
    note = f" (lower is better for {', '.join(lower)})" if lower else ""
    if legacy:
        return "\n".join(lines) + f"\n\nMean ± std over seeds; best mean per dataset in bold{note}.\n"
    text = ("Mean [95 % t interval over seeds]; a single seed has no interval. Bold: the best mean per dataset where "
            f"its paired bootstrap difference to every other row (on the seeds both have) excludes 0{note}.")
    if diffs:
        text += (f" Δ vs {reference}: the mean over seeds minus {reference}'s mean over the same seeds (those both "
                 "rows have; named when fewer than the row's; so it can differ from the difference of the two mean "
                 "columns when one row has more seeds) on the same test samples, with its 95 % paired "
                 "bootstrap interval over test samples (2,000 resamples, pooled over seeds; the full-data row against "
                 f"{reference} at the table's budget); * = the interval excludes 0. The interval holds the fine-tunes "
                 "fixed: it is the test sample's uncertainty, not the fine-tuning seed's.")
    return "\n".join(lines) + "\n\n" + text + "\n"


def _run_origin(run_dir: str | os.PathLike) -> tuple[str, str | None]:
    """A run's commit ('+dirty' when its checkout had uncommitted changes; 'unknown' when none is recorded) and
    command (the recorded argv as `python -m goracs ...`; None when none is recorded), from its run_info.json."""
    try:
        rec = json.loads((Path(run_dir) / "run_info.json").read_text())
    except (OSError, json.JSONDecodeError):
        rec = {}
    git = rec.get("git") or {}
    c = git.get("commit")
    commit = f"{c[:7]}{'+dirty' if git.get('dirty') else ''}" if c else "unknown"
    argv = rec.get("argv")
    return commit, ("python -m goracs " + " ".join(shlex.quote(str(a)) for a in argv[1:])) if argv else None


def _seed_span(seeds: Iterable[int]) -> str:
    """0, 1, 2, 3, 5 -> '0-3, 5'."""
    out: list[list[int]] = []
    for s in sorted(set(seeds)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def provenance(runs: pd.DataFrame, roots: Iterable[str | os.PathLike], by_row: str | None = None,
               rows_out: list | None = None) -> str:
    """Where a table comes from: run count, folders, seeds, the commits of the runs (read from each run's
    run_info.json; '+dirty' when a run came from a checkout with uncommitted changes) and the commands that ran
    them (the recorded argv as `python -m goracs ...`; a multirun's jobs share one), numbered. With `by_row` (a
    task), also one line per table row: its seeds, and which commit and which numbered command ran which seeds
    (appended to `rows_out` as row_origins gives them, when a list is passed)."""
    if runs.empty:
        return ""
    origin = {d: _run_origin(d) for d in runs["run_dir"]}
    commits = {c for c, _ in origin.values()}
    commands = sorted({c for _, c in origin.values() if c})
    number = {c: i + 1 for i, c in enumerate(commands)}
    seeds = sorted({int(s) for s in runs["seed"].dropna()}) if "seed" in runs else []
    folders = ", ".join(f"`{Path(r).name}/`" for r in roots)
    cmd = "".join(f"\n{number[c]}. `{c}`" for c in commands)
    text = (f"From {len(runs)} runs in {folders}; seeds {', '.join(map(str, seeds)) or '-'}; "
            f"code commit(s) {', '.join(sorted(commits))}." + (f" Command(s):{cmd}" if cmd else "") + "\n\n")
    rows = row_origins(runs, by_row, origin, number) if by_row else []
    if rows_out is not None:
        rows_out.extend(rows)
    if rows:
        text += "Rows (seeds; the commit and command that ran them):\n" + "".join(
            f"- {r['row']}: {r['text']}\n" for r in rows) + "\n"
    return text


def row_origins(runs: pd.DataFrame, task: str, origin: dict | None = None,
                number: dict | None = None) -> list[dict[str, Any]]:
    """Per table row (the runs `task_runs` keeps, one per row x seed): its label, GROUP values, and a text naming
    its seeds by commit and command number, e.g. 'seeds 0-2 at 9b94b65 by command 1; 3-7 at fa67bac by command 2'."""
    df = task_runs(runs, task)
    if df.empty:
        return []
    origin = origin if origin is not None else {d: _run_origin(d) for d in df["run_dir"]}
    if number is None:
        number = {c: i + 1 for i, c in enumerate(sorted({c for _, c in origin.values() if c}))}
    out = []
    for key, part in df.groupby(GROUP, dropna=False, sort=True):
        by: dict[tuple[str, str], list[int]] = {}
        for d, s in zip(part["run_dir"], part["seed"]):
            commit, command = origin.get(d) or _run_origin(d)
            by.setdefault((commit, f" by command {number[command]}" if command in number else ""), []).append(int(s))
        groups = sorted(by.items(), key=lambda kv: min(kv[1]))
        text = "; ".join(f"{'seeds ' if i == 0 else ''}{_seed_span(v)} at {c}{how}"
                         for i, ((c, how), v) in enumerate(groups))
        rec = dict(zip(GROUP, key))
        lam = "" if rec["lam"] == "-" else f", lambda {rec['lam']}"
        out.append({**rec, "row": f"`{rec['selector']}` {int(rec['budget'])}{lam}", "text": text})
    return out


def write_tables(roots: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                 runs: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Write table_<task>.md and table_<task>.csv for every task that has runs (a task without runs keeps the
    table files it has, e.g. when only one task's half of a study was re-run); returns the summaries. `runs`: the
    runs already collected from `roots` (a report that reads them once, so that a job finishing while it writes
    cannot be in one of its sections and not another); None collects them here."""
    roots = list(roots)
    runs = collect(roots) if runs is None else runs
    out_dir = Path(out_dir)
    out = {}
    for task in TASKS:
        s = summarise(runs, task) if not runs.empty else pd.DataFrame()
        paired, best = None, None
        if not s.empty and any(load_predictions(d) is not None for d in runs.loc[runs["task"] == task, "run_dir"]):
            names = [c[:-5] for c in s.columns if c.endswith("_mean")]
            paired = paired_vs(runs, task, names)
            best = significant_best(runs, s, task, names)
            if not paired.empty:  # lam is "-" for selectors without one: object on both sides (0.5 == 0.5 still)
                s = s.astype({"lam": object}).merge(paired.astype({"lam": object}), on=GROUP, how="left")
        part = runs[runs["task"] == task] if not runs.empty else runs
        if part.empty and (out_dir / f"table_{task}.md").exists():
            log.warning("no %s runs under %s: %s left as it is", task, ", ".join(map(str, roots)),
                        out_dir / f"table_{task}.md")
            out[task] = s
            continue
        rows: list = []
        write_text(out_dir / f"table_{task}.md", f"# {task} results\n\n"
                   + provenance(part, roots, by_row=task, rows_out=rows) + to_markdown(s, task, paired, best))
        if not s.empty:  # the csv names each row's seeds by commit and command, as the md does above its table
            origins = {tuple(str(r[g]) for g in GROUP): r["text"] for r in rows}
            s = s.assign(origin=[origins.get(tuple(str(r[g]) for g in GROUP), "")
                                 for r in s.to_dict("records")])
        with atomic_path(out_dir / f"table_{task}.csv") as tmp:
            s.to_csv(tmp, index=False)
        out[task] = s
    return out
