"""The names that make runs comparable in W&B, and the comparison dashboard built on them.

Every pipeline run logs, next to its nested resolved config, the flat config keys of `RUN_KEYS` (`run_keys`) and
its metrics in the run summary under task-independent names (`summary_metrics`): `test/<metric>` for the
evaluation (test/auc, test/logloss, test/hr@5, test/ndcg@10, ...) and `proxy/<value>` for the proxy check
(proxy/poo, proxy/poo_lam, proxy/test_loss). The POO descent of ITRA is a history series per trajectory
(`<name>/value` against `<name>/iteration`, see `WandbLogger.log_trajectory`).

`dashboard_plan` turns a composed config into one section per dataset-task: a bar panel per metric of the task
(eval.metrics and eval.ks), runs grouped by selector with the mean and the spread over seeds, filtered to one
budget; line panels of the POO descent; the proxy check (POO against test loss). `build_report` makes the
wandb-workspaces Report of that plan; `report_spec` serialises it without any network access (the run sets carry
no entity/project offline, the only field whose serialisation asks the W&B server for an id); `save_report`
points the run sets at the project and saves it (network, a W&B login). scripts/wandb_dashboard.py is the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from goracs.config import to_dict

# the flat config keys every pipeline run logs (top level of the W&B run config, beside the nested config); the
# nested config already holds `dataset`, `task` and `selector` as sections, hence the `_name` keys
RUN_KEYS = ("dataset_name", "task_name", "profile_name", "selector_name", "lam", "budget", "seed")
GROUP_KEY = "selector_name"          # what the dashboard's panels group runs by
NO_PROFILE = "none"                  # profile_name of a run composed without a profile
TEST_PREFIX, PROXY_PREFIX = "test/", "proxy/"
PROXY_KEYS = ("poo", "poo_lam", "test_loss")
# the POO trajectories the pipeline logs per task: one for SeqRec; one per class for CTR (label-enhanced ITRA)
TRAJECTORIES = {"seqrec": ("poo",), "ctr": ("poo_class0", "poo_class1")}
AGGREGATE, SPREAD = "mean", "stddev"  # the panels' groupby_aggfunc and groupby_rangefunc (over seeds)
SPREADS = ("stddev", "stderr", "minmax", "none")
PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "profile"


class DashboardError(ValueError):
    """A dashboard request that cannot work, named in the message."""


# ------------------------------------------------------------------------------------------- names a run logs
def profile_of(cfg: Any) -> str:
    """The run's profile name: an explicit `profile_name` key, else Hydra's choice of the `profile` group (set for
    every `python -m goracs` job, multiruns included), else the suffix of an explicit logger group that names a
    profile file (`table-default`, `pilot-real_cpu`), else "none"."""
    c = cfg if hasattr(cfg, "get") else to_dict(cfg)
    explicit = c.get("profile_name")
    if explicit not in (None, ""):
        return str(explicit)
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choice = HydraConfig.get().runtime.choices.get("profile")
            return str(choice) if choice not in (None, "null", "None", "") else NO_PROFILE
    except (ImportError, ValueError, AttributeError):
        pass
    logger = c.get("logger") or {}
    group = logger.get("group") if hasattr(logger, "get") else None
    if group and "-" in str(group):
        suffix = str(group).rsplit("-", 1)[1]
        if (PROFILE_DIR / f"{suffix}.yaml").is_file():
            return suffix
    return NO_PROFILE


def run_keys(cfg: Any) -> dict[str, Any]:
    """The flat keys of one pipeline run: dataset, task, profile and selector names, the selector's lambda (None
    for selectors without one), the requested budget (`selector.budget`, the value the dashboard filters on; the
    coreset's actual size is the summary's `coreset/size`) and the seed."""
    lam = cfg.selector.get("lam")
    return {"dataset_name": str(cfg.dataset.name), "task_name": str(cfg.task.name), "profile_name": profile_of(cfg),
            "selector_name": str(cfg.selector.name), "lam": None if lam is None else float(lam),
            "budget": int(cfg.selector.budget), "seed": int(cfg.seed)}


def summary_name(key: str) -> str:
    """The summary name of one recorded metric: proxy/<key> for the proxy check, test/<key> (lower case) for the
    evaluation's metrics."""
    k = str(key).lower()
    return PROXY_PREFIX + k if k in PROXY_KEYS else TEST_PREFIX + k


def summary_metrics(scalars: Mapping[str, Any]) -> dict[str, Any]:
    """The run summary of a job's scalar metrics, under names that are the same for every task."""
    out = {summary_name(k): v for k, v in scalars.items()}
    if len(out) != len(scalars):
        raise DashboardError(f"metric names collide once renamed: {sorted(scalars)}")
    return out


def metric_names(task: str, eval_cfg: Any) -> list[str]:
    """The summary names of a task's reported metrics (eval.metrics.<task> at every cut-off in eval.ks)."""
    from goracs.evaluate.metrics import task_metrics

    return [summary_name(m.name) for m in task_metrics(task, to_dict(eval_cfg))]


# ------------------------------------------------------------------------------------------------- the plan
def section_plan(dataset: str, task: str, budget: int, eval_cfg: Any, profile: str | None = None,
                 group: str | None = None, spread: str = SPREAD) -> dict[str, Any]:
    """One dataset-task section: its run filter, its grouping and its panels (plain data)."""
    if spread not in SPREADS:
        raise DashboardError(f"spread must be one of {SPREADS}, got {spread!r}")
    if task not in TRAJECTORIES:
        raise DashboardError(f"unknown task {task!r}; known: {sorted(TRAJECTORIES)}")
    filters = {"dataset_name": dataset, "task_name": task, "budget": int(budget)}
    if profile:
        filters["profile_name"] = profile
    grouped = {"groupby": GROUP_KEY, "aggregate": AGGREGATE, "spread": spread}
    panels = [{"kind": "bar", "role": "metric", "title": m, "metrics": [m], **grouped}
              for m in metric_names(task, eval_cfg)]
    panels += [{"kind": "line", "role": "poo_descent", "title": f"POO descent ({name})",
                "x": f"{name}/iteration", "y": [f"{name}/value"], **grouped} for name in TRAJECTORIES[task]]
    panels += [{"kind": "scatter", "role": "proxy_check", "title": "proxy check: POO vs test loss",
                "x": PROXY_PREFIX + "poo", "y": PROXY_PREFIX + "test_loss"},
               {"kind": "bar", "role": "proxy", "title": PROXY_PREFIX + "poo", "metrics": [PROXY_PREFIX + "poo"],
                **grouped}]
    return {"name": f"{dataset} / {task} / budget {int(budget)}", "dataset": dataset, "task": task,
            "budget": int(budget), "group": group, "filters": filters, **grouped, "panels": panels}


def dashboard_plan(sections: Iterable[Mapping[str, Any]], eval_cfg: Any, project: str = "goracs",
                   entity: str | None = None, title: str | None = None, profile: str | None = None,
                   group: str | None = None, spread: str = SPREAD) -> dict[str, Any]:
    """The dashboard: one section per {dataset, task, budget} in `sections` (each may carry its own `eval`)."""
    secs = [section_plan(s["dataset"], s["task"], int(s["budget"]), s.get("eval", eval_cfg), profile, group,
                         spread) for s in sections]
    if not secs:
        raise DashboardError("no dataset-task section to show")
    seen = [(s["dataset"], s["task"], s["budget"]) for s in secs]
    if len(set(seen)) != len(seen):
        raise DashboardError(f"a dataset-task-budget section is listed twice: {seen}")
    return {"kind": "wandb-report", "project": project, "entity": entity,
            "title": title or f"GORACS baselines ({profile or 'all profiles'})", "profile": profile, "group": group,
            "run_keys": list(RUN_KEYS), "sections": secs}


def sections_from_config(cfg_for: Any, datasets: Iterable[str], tasks: Iterable[str],
                         budgets: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Sections for every dataset x task, each with the budget and eval settings of its composed config
    (`cfg_for(dataset, task)` -> DictConfig); `budgets` (task -> n, or "*" -> n) overrides the budget."""
    out = []
    for d in datasets:
        for t in tasks:
            cfg = cfg_for(d, t)
            b = (budgets or {}).get(t, (budgets or {}).get("*", cfg.selector.budget))
            out.append({"dataset": str(cfg.dataset.name), "task": str(cfg.task.name), "budget": int(b),
                        "eval": to_dict(cfg.eval)})
    return out


# ---------------------------------------------------------------------------------------- wandb-workspaces
def _filter_exprs(filters: Mapping[str, Any], group: str | None):
    from wandb_workspaces import expr

    out = [expr.Config(k) == v for k, v in filters.items()]
    if group:
        out.append(expr.Metric("Group") == group)
    return expr.And(*out)


def _panel(p: Mapping[str, Any]):
    import wandb_workspaces.reports.v2 as wr

    grouped = {}
    if p.get("groupby"):
        grouped = {"groupby": wr.Config(p["groupby"]), "groupby_aggfunc": p["aggregate"],
                   "groupby_rangefunc": p["spread"]}
    if p["kind"] == "bar":
        return wr.BarPlot(title=p["title"], metrics=list(p["metrics"]), orientation="v", **grouped)
    if p["kind"] == "line":
        return wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]), title_x="ITRA iteration", title_y="POO",
                           **grouped)
    if p["kind"] == "scatter":
        return wr.ScatterPlot(title=p["title"], x=p["x"], y=p["y"], regression=True)
    raise DashboardError(f"unknown panel kind {p['kind']!r}")


def build_report(plan: Mapping[str, Any], online: bool = False):
    """The wandb-workspaces Report of a plan: per section a heading and a panel grid whose run set is filtered to
    the section and grouped by selector. Offline (online=False) the run sets name no entity/project and the
    report's entity is the plan's (or ""), so nothing here asks the W&B server anything."""
    import wandb_workspaces.reports.v2 as wr

    entity = plan.get("entity") or ""
    if online and not entity:
        raise DashboardError("saving a report needs an entity (--entity, or the login's default entity)")
    rs_target = {"entity": entity, "project": plan["project"]} if online else {}
    blocks = [wr.P(f"Runs grouped by {GROUP_KEY}: {AGGREGATE} and spread over seeds. Flat run keys: "
                   f"{', '.join(plan['run_keys'])}. Built by scripts/wandb_dashboard.py.")]
    for s in plan["sections"]:
        where = " and ".join(f"{k} = {v}" for k, v in s["filters"].items())
        blocks.append(wr.H2(s["name"]))
        blocks.append(wr.P(f"runs where {where}" + (f" in group {s['group']}" if s.get("group") else "")))
        runset = wr.Runset(name=s["name"], filters=_filter_exprs(s["filters"], s.get("group")),
                           groupby=[f"config.{s['groupby']}"], **rs_target)
        blocks.append(wr.PanelGrid(runsets=[runset], panels=[_panel(p) for p in s["panels"]]))
    return wr.Report(project=plan["project"], entity=entity, title=plan["title"],
                     description="Baselines compared per dataset-task (goracs)", blocks=blocks)


def report_spec(report) -> dict[str, Any]:
    """The report as the JSON the W&B server stores (what `Report.save` uploads), built without network access
    when the report's run sets name no entity/project (build_report(online=False))."""
    return report._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def write_spec(plan: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The plan and its wandb-workspaces report spec, written as JSON to `path`."""
    from importlib.metadata import version

    out = {**plan, "library": f"wandb-workspaces {version('wandb-workspaces')}",
           "report": report_spec(build_report(plan, online=False))}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=1) + "\n")
    return out


def save_report(plan: Mapping[str, Any]):
    """Save the report to the plan's entity/project (network and a W&B login); returns the saved Report."""
    report = build_report(plan, online=True)
    return report.save()


# -------------------------------------------------------------------------------------------------- command
def _budgets(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        task, _, n = v.rpartition("=")
        try:
            out[task or "*"] = int(n)
        except ValueError:
            raise DashboardError(f"--budget takes N or TASK=N, got {v!r}") from None
    return out


def composer(profile: str | None, overrides: Iterable[str] = ()):
    """cfg_for(dataset, task): the composed config of one section (the profile, the task, the dataset when given,
    and the extra Hydra overrides)."""
    from hydra import compose, initialize_config_dir

    config_dir = str(PROFILE_DIR.parent)
    base = ([f"profile={profile}"] if profile and profile != NO_PROFILE else []) + list(overrides)

    def cfg_for(dataset: str | None, task: str):
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return compose("config", overrides=base + [f"task={task}"] + ([f"dataset={dataset}"] if dataset else []))

    return cfg_for


def offline_requested(offline_flag: bool, save_flag: bool) -> str | None:
    """Why the dashboard stays offline (a spec file only), or None when it is to be saved to W&B."""
    import os

    if offline_flag:
        return "--offline"
    if not save_flag:
        return "no --save"
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    return None


def main(argv: Iterable[str] | None = None) -> int:
    """scripts/wandb_dashboard.py: write the dashboard spec (always) and save it as a W&B report (--save)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="wandb_dashboard.py", description=(
        "Build the W&B dashboard that compares selectors per dataset-task (a wandb-workspaces report). Offline (the "
        "default, --offline or WANDB_MODE=offline) it only writes the spec as JSON; --save also saves the report "
        "to the W&B project (needs a W&B login)."))
    ap.add_argument("--profile", default="default",
                    help="runs of this profile (profile_name); its config gives the dataset, budgets and metrics "
                         "(default: default; 'none' = runs composed without a profile)")
    ap.add_argument("--dataset", action="append", help="dataset config name(s) (default: the profile's dataset)")
    ap.add_argument("--task", action="append", choices=sorted(TRAJECTORIES),
                    help="task(s), one section each per dataset (default: seqrec and ctr)")
    ap.add_argument("--budget", action="append", default=[],
                    help="the budget to filter on: N for every task or TASK=N (default: selector.budget of the "
                         "composed config)")
    ap.add_argument("--group", help="only runs of this W&B group (e.g. table-default: the table experiment)")
    ap.add_argument("--spread", default=SPREAD, choices=SPREADS, help="the spread over seeds (default: stddev)")
    ap.add_argument("--project", help="W&B project (default: logger.project)")
    ap.add_argument("--entity", help="W&B entity (default: logger.entity, else the login's default entity)")
    ap.add_argument("--title", help="report title")
    ap.add_argument("--out", default=str(PROFILE_DIR.parents[1] / "results" / "wandb_dashboard.json"),
                    help="where the spec goes (default: results/wandb_dashboard.json)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true", help="write the spec only, no network (the default)")
    mode.add_argument("--save", action="store_true", help="also save the report to W&B (network, W&B login)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the composed config, e.g. eval.ks=[5,10,20]")
    args = ap.parse_args(list(argv) if argv is not None else None)

    try:
        profile = args.profile or None
        cfg_for = composer(profile, args.overrides)
        tasks = args.task or ["seqrec", "ctr"]
        datasets = args.dataset or [None]
        sections = sections_from_config(cfg_for, datasets, tasks, _budgets(args.budget))
        base = cfg_for(args.dataset[0] if args.dataset else None, tasks[0])
        plan = dashboard_plan(sections, None, project=args.project or base.logger.get("project") or "goracs",
                              entity=args.entity or base.logger.get("entity"), title=args.title, profile=profile,
                              group=args.group, spread=args.spread)
    except DashboardError as e:
        print(f"wandb_dashboard: {e}", file=sys.stderr)
        return 2
    why_offline = offline_requested(args.offline, args.save)
    write_spec(plan, args.out)
    print(f"wrote {args.out}: {len(plan['sections'])} sections "
          f"({', '.join(s['name'] for s in plan['sections'])})")
    if why_offline:
        if args.save:
            print(f"not saved to W&B ({why_offline}); unset it to save", file=sys.stderr)
        return 0
    try:
        if not plan["entity"]:
            import wandb

            plan = {**plan, "entity": wandb.Api().default_entity}
        report = save_report(plan)
    except Exception as e:  # noqa: BLE001 - no login, no network, no project: say so, the spec is written
        print(f"not saved to W&B: {e}", file=sys.stderr)
        return 1
    print(f"saved {report.url}")
    return 0
