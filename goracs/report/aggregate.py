"""Aggregate run folders (each holding a metrics.json) into results tables: mean +- std over seeds, best per
column marked."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from goracs.evaluate.metrics import metric, task_metrics
from goracs.io import atomic_path, write_text
from goracs.tasks import TASKS

log = logging.getLogger(__name__)

GROUP = ["dataset", "task", "selector", "budget", "lam"]


def collect(roots: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per metrics.json found under the given folders (recursively)."""
    rows = []
    for root in roots:
        for path in sorted(Path(root).rglob("metrics.json")):
            try:
                m = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
            if not {"dataset", "task", "selector"} <= set(m):
                continue  # a stage artifact, not a run summary
            # the metrics this run's own eval config asked for (eval.metrics, eval.ks), in table order
            names = [x.name for x in task_metrics(m["task"], (m.get("config") or {}).get("eval"))]
            rows.append({**{k: v for k, v in m.items() if not isinstance(v, (list, dict))},
                         "run_dir": str(path.parent), "_metrics": ",".join(names)})
    return pd.DataFrame(rows)


def table_metrics(runs: pd.DataFrame, task: str) -> list[str]:
    """The metric columns of a task's table: those the runs' eval configs list, in their order, that were
    recorded."""
    if runs.empty or "_metrics" not in runs:
        return [x.name for x in task_metrics(task, None)]
    names: list[str] = []
    for spec in runs.loc[runs["task"] == task, "_metrics"].dropna():
        names += [n for n in str(spec).split(",") if n and n not in names]
    return [n for n in names if n in runs]


def summarise(runs: pd.DataFrame, task: str) -> pd.DataFrame:
    """Mean and std over seeds of the task's metrics, one row per dataset x selector x budget x lambda."""
    metrics = table_metrics(runs, task)
    df = runs[runs["task"] == task].copy()
    if df.empty:
        return pd.DataFrame()
    for col in GROUP:
        if col not in df:
            df[col] = np.nan
    df["lam"] = df["lam"].astype(object).where(df["lam"].notna(), "-")
    df = df.drop_duplicates(GROUP + ["seed"], keep="last")  # a re-run of a finished job counts once
    agg = {}
    for m in metrics:
        if m in df:
            agg[f"{m}_mean"] = (m, "mean")
            agg[f"{m}_std"] = (m, lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0)
    agg["seeds"] = ("seed", "nunique")
    return df.groupby(GROUP, dropna=False).agg(**agg).reset_index()


def to_markdown(summary: pd.DataFrame, task: str) -> str:
    """A markdown table with mean +- std; the best mean per dataset and metric is in bold."""
    if summary.empty:
        return f"No {task} runs found.\n"
    metrics = [c[:-5] for c in summary.columns if c.endswith("_mean")]
    best = {}
    for ds, part in summary.groupby("dataset"):
        for m in metrics:
            col = part[f"{m}_mean"]
            best[(ds, m)] = col.max() if metric(m).higher_is_better else col.min()
    head = ["dataset", "selector", "budget", "lambda"] + [metric(m).label for m in metrics] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.sort_values(["dataset", "budget", "selector"]).to_dict("records"):
        cells = [str(r["dataset"]), str(r["selector"]), str(int(r["budget"])), str(r["lam"])]
        for m in metrics:
            mean, std = r[f"{m}_mean"], r[f"{m}_std"]
            text = f"{mean:.4f} ± {std:.4f}"
            cells.append(f"**{text}**" if np.isclose(mean, best[(r['dataset'], m)]) else text)
        cells.append(str(r["seeds"]))
        lines.append("| " + " | ".join(cells) + " |")
    lower = [m for m in metrics if not metric(m).higher_is_better]
    note = f" (lower is better for {', '.join(lower)})" if lower else ""
    return "\n".join(lines) + f"\n\nMean ± std over seeds; best mean per dataset in bold{note}.\n"


def provenance(runs: pd.DataFrame, roots: Iterable[str | os.PathLike]) -> str:
    """One line saying where a table comes from: run count, folders, seeds, and the commits of the runs (read
    from each run's run_info.json; '+dirty' when a run came from a checkout with uncommitted changes)."""
    if runs.empty:
        return ""
    commits = set()
    for d in runs["run_dir"]:
        info = Path(d) / "run_info.json"
        try:
            git = json.loads(info.read_text()).get("git") or {}
        except (OSError, json.JSONDecodeError):
            git = {}
        c = git.get("commit")
        commits.add(f"{c[:7]}{'+dirty' if git.get('dirty') else ''}" if c else "unknown")
    seeds = sorted({int(s) for s in runs["seed"].dropna()}) if "seed" in runs else []
    folders = ", ".join(f"`{Path(r).name}/`" for r in roots)
    return (f"From {len(runs)} runs in {folders}; seeds {', '.join(map(str, seeds)) or '-'}; "
            f"code commit(s) {', '.join(sorted(commits))}.\n\n")


def write_tables(roots: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Write table_<task>.md and table_<task>.csv for every task that has runs (a task without runs keeps the
    table files it has, e.g. when only one task's half of a study was re-run); returns the summaries."""
    roots = list(roots)
    runs = collect(roots)
    out_dir = Path(out_dir)
    out = {}
    for task in TASKS:
        s = summarise(runs, task) if not runs.empty else pd.DataFrame()
        part = runs[runs["task"] == task] if not runs.empty else runs
        if part.empty and (out_dir / f"table_{task}.md").exists():
            log.warning("no %s runs under %s: %s left as it is", task, ", ".join(map(str, roots)),
                        out_dir / f"table_{task}.md")
            out[task] = s
            continue
        write_text(out_dir / f"table_{task}.md", f"# {task} results\n\n" + provenance(part, roots)
                   + to_markdown(s, task))
        with atomic_path(out_dir / f"table_{task}.csv") as tmp:
            s.to_csv(tmp, index=False)
        out[task] = s
    return out
