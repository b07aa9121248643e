"""The `aggregate` stage: the results tables of a profile's table runs, the figures of its sweeps (metric against
lambda and budget, POO descent, the proxy check) and the tables logged to W&B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from goracs.config import to_dict as as_dict

def run_aggregate(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Tables from the profile's table runs and figures from its sweeps, into results/ (and W&B)."""
    from goracs.evaluate.metrics import main_metric
    from goracs.report import plots
    from goracs.report.aggregate import collect, write_tables

    prof = cfg.aggregate.profile
    root = Path(cfg.paths.output_dir)
    res = Path(cfg.paths.results_dir)
    tables = write_tables([root / f"table_{prof}"], res)
    figs = res / "figures"
    made = []
    sweeps = collect([root / f"sweep_{prof}"]) if (root / f"sweep_{prof}").exists() else None
    main = {t: main_metric(t, as_dict(cfg.eval)).name for t in ("seqrec", "ctr")}
    if sweeps is not None and not sweeps.empty:
        for task, part in sweeps.groupby("task"):
            m = main[task]
            lam_runs = part[(part["selector"] == "goracs") & part["lam"].notna()]
            if lam_runs["lam"].nunique() > 1:
                b = lam_runs["budget"].mode().iloc[0]
                made.append(plots.metric_vs(lam_runs[lam_runs["budget"] == b], "lam", m,
                                            figs / f"{task}_{m}_vs_lambda.png",
                                            f"{task}: {m.upper()} against lambda (n = {b})"))
            if part["budget"].nunique() > 1:
                lam_default = cfg.aggregate.get("lam", {}).get(task)
                keep = part[(part["selector"] != "goracs") | (part["lam"].astype(float) == float(lam_default))] \
                    if lam_default is not None else part
                made.append(plots.metric_vs(keep, "budget", m, figs / f"{task}_{m}_vs_budget.png",
                                            f"{task}: {m.upper()} against budget"))
    runs = collect([root / f"table_{prof}", root / f"sweep_{prof}"])
    if not runs.empty and "poo" in runs and "test_loss" in runs:
        for task, part in runs.dropna(subset=["poo", "test_loss"]).groupby("task"):
            b = part["budget"].mode().iloc[0]
            part = part[part["budget"] == b]
            if len(part) > 2:
                kinds = ["random" if s == "random" else ("GORACS" if str(s).startswith("goracs") else "other selectors")
                         for s in part["selector"]]
                made.append(plots.proxy_check(part["poo"].to_numpy(float), part["test_loss"].to_numpy(float),
                                              kinds, figs / f"{task}_proxy_check.png"))
    traj = {}
    for path in sorted((root / f"table_{prof}").rglob("metrics.json")):
        m = json.loads(path.read_text())
        if m.get("poo_trajectories") and m.get("seed", 0) == 0:
            for name, values in m["poo_trajectories"].items():
                label = f"{m['dataset']}/{m['task']} n={m['budget']}" + ("" if name == "all" else f" {name}")
                traj[label] = values
    if traj:
        made.append(plots.poo_descent(traj, figs / "poo_descent.png"))
    print("\n".join(f"wrote {p}" for p in made))
    if cfg.get("logger") is not None and cfg.logger.get("backend", "none") != "none":
        from goracs.report.wandb import make_logger

        with make_logger(cfg.logger, as_dict(cfg), dir=str(out_dir), job_type="aggregate",
                         group=f"table-{prof}") as logger:
            for task, df in tables.items():
                if not df.empty:
                    logger.log_table(f"table_{task}", df)
    return {"tables": {k: len(v) for k, v in tables.items()}, "figures": [str(p) for p in made],
            "metrics": main}
