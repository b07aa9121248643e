"""The W&B comparison dashboard: the names every pipeline run logs (flat config keys, summary metrics named the same
for every task, the POO descent as a history series), and the dashboard spec built on them with wandb-workspaces:
one section per dataset-task filtered to a budget, a panel per metric grouped by selector with mean and spread,
the POO-descent and proxy-check panels; offline without any network access, --save through Report.save."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from goracs.__main__ import CONFIG_DIR
from goracs.evaluate.metrics import task_metrics
from goracs.report import dashboard as D

ROOT = D.PROFILE_DIR.parents[1]


def composed(*overrides, hydra=False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or W&B API object fails the test."""
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import wandb

    monkeypatch.setattr(wandb, "Api", refuse)


@pytest.fixture
def hydra_job():
    """Run as a `python -m goracs` job does: Hydra's config (with its group choices) is set."""
    def set_(*overrides):
        HydraConfig.instance().set_config(composed(*overrides, hydra=True))

    yield set_
    HydraConfig.instance().cfg = None


def grids(spec):
    """(heading, panel-grid metadata) per section of a serialised report."""
    blocks = spec["report"]["spec"]["blocks"]
    heads = [b["children"][0]["text"] for b in blocks if b["type"] == "heading"]
    metas = [b["metadata"] for b in blocks if b["type"] == "panel-grid"]
    assert len(heads) == len(metas)
    return list(zip(heads, metas))


# ---------------------------------------------------------------------------------------------- logged names
def test_summary_names_are_the_same_for_every_task():
    ctr = {"auc": 0.61, "logloss": 0.68, "poo": 1.5, "poo_lam": 0.5, "test_loss": 0.69}
    seq = {"hr@5": 0.2, "hr@10": 0.3, "ndcg@5": 0.1, "ndcg@10": 0.15, "poo": 2.0, "poo_lam": 0.1, "test_loss": 3.2}
    assert D.summary_metrics(ctr) == {"test/auc": 0.61, "test/logloss": 0.68, "proxy/poo": 1.5,
                                      "proxy/poo_lam": 0.5, "proxy/test_loss": 0.69}
    assert D.summary_metrics(seq) == {"test/hr@5": 0.2, "test/hr@10": 0.3, "test/ndcg@5": 0.1,
                                      "test/ndcg@10": 0.15, "proxy/poo": 2.0, "proxy/poo_lam": 0.1,
                                      "proxy/test_loss": 3.2}
    with pytest.raises(D.DashboardError, match="collide"):
        D.summary_metrics({"AUC": 0.6, "auc": 0.7})
    # the dashboard's metric panels read the same names, from eval.metrics and eval.ks
    ev = {"metrics": {"seqrec": ["ndcg"], "ctr": ["logloss", "auc"]}, "ks": [3, 20]}
    assert D.metric_names("seqrec", ev) == ["test/ndcg@3", "test/ndcg@20"]
    assert D.metric_names("ctr", ev) == ["test/logloss", "test/auc"]


def test_flat_run_keys_and_the_profile_name(hydra_job):
    cfg = composed("experiment=sweep_budget_default", "task=ctr", "selector=goracs", "selector.budget=16", "seed=3")
    # composed in-process, no Hydra job: the explicit logger group names the profile (sweep-default)
    assert D.run_keys(cfg) == {"dataset_name": "synthetic", "task_name": "ctr", "profile_name": "default",
                               "selector_name": "goracs", "lam": 0.5, "budget": 16, "seed": 3}
    rnd = composed("task=seqrec", "selector=random")
    keys = D.run_keys(rnd)
    assert keys["profile_name"] == "none" and keys["lam"] is None and keys["budget"] == 1024  # the task's budget
    assert D.profile_of(composed("logger.group=table-nosuchprofile")) == "none"
    # a profile_name key wins (one line per profile file would set it)
    assert D.profile_of(composed("++profile_name=paper", "logger.group=table-default")) == "paper"
    # a Hydra job: the profile group's choice, whatever the logger group says
    hydra_job("profile=real_cpu", "logger.group=table-default")
    assert D.profile_of(composed("logger.group=table-default")) == "real_cpu"
    hydra_job("logger.group=table-default")
    assert D.profile_of(composed("logger.group=table-default")) == "none"


def test_poo_trajectory_is_a_history_series_on_its_own_axis(tmp_path, monkeypatch):
    """What the POO-descent panels plot: {name}/value against {name}/iteration, one row per ITRA iteration, kept
    out of the summary (which has {name}/initial and {name}/final); the no-op logger records the same rows."""
    from goracs.report.wandb import RunLogger, make_logger, read_offline_run

    monkeypatch.setenv("WANDB_SILENT", "true")
    with make_logger({"backend": "wandb", "mode": "offline", "dir": str(tmp_path)}) as lg:
        lg.log_metrics({"val/loss": 1.0}, step=0)
        lg.log_metrics({"val/loss": 0.5}, step=1)
        lg.log_trajectory([0.9, 0.8, 0.7], name="poo_class1")
        run_dir = lg.run_dir
    rec = read_offline_run(run_dir)
    series = [(h["poo_class1/iteration"], h["poo_class1/value"]) for h in rec["history"] if "poo_class1/value" in h]
    assert series == [(0, 0.9), (1, 0.8), (2, 0.7)]
    assert [h["val/loss"] for h in rec["history"] if "val/loss" in h] == [1.0, 0.5]  # training rows untouched
    assert rec["summary"]["poo_class1/final"] == 0.7 and "poo_class1/value" not in rec["summary"]
    none = RunLogger()
    none.log_trajectory([0.9, 0.8], name="poo")
    assert none.history == [{"poo/iteration": 0, "poo/value": 0.9}, {"poo/iteration": 1, "poo/value": 0.8}]


# ------------------------------------------------------------------------------------------- dashboard spec
def test_offline_spec_sections_panels_grouping_and_budget_filter(tmp_path, no_network, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline because --save is not given
    out = tmp_path / "dash.json"
    rc = D.main(["--profile", "default", "--dataset", "synthetic", "--dataset", "games", "--budget", "ctr=64",
                 "--out", str(out), "eval.ks=[5,10,20]"])
    assert rc == 0
    spec = json.loads(out.read_text())
    assert spec["kind"] == "wandb-report" and spec["project"] == "goracs"
    assert spec["library"].startswith("wandb-workspaces ")
    assert spec["run_keys"] == list(D.RUN_KEYS)
    secs = {(s["dataset"], s["task"]): s for s in spec["sections"]}
    assert list(secs) == [("synthetic", "seqrec"), ("synthetic", "ctr"), ("games", "seqrec"), ("games", "ctr")]
    ev = composed("profile=default", "eval.ks=[5,10,20]").eval
    for (dataset, task), s in secs.items():
        budget = 64 if task == "ctr" else 32  # --budget ctr=64; seqrec keeps the default profile's budget
        assert s["filters"] == {"dataset_name": dataset, "task_name": task, "budget": budget,
                                "profile_name": "default"}
        metrics = [p for p in s["panels"] if p["role"] == "metric"]
        assert [p["metrics"] for p in metrics] == [[f"test/{m.name}"] for m in task_metrics(task, ev)]
        for p in s["panels"]:
            if p["kind"] != "scatter":
                assert (p["groupby"], p["aggregate"], p["spread"]) == ("selector_name", "mean", "stddev")
        poo = [p for p in s["panels"] if p["role"] == "poo_descent"]
        names = ["poo"] if task == "seqrec" else ["poo_class0", "poo_class1"]
        assert [(p["x"], p["y"]) for p in poo] == [(f"{n}/iteration", [f"{n}/value"]) for n in names]
        (proxy,) = [p for p in s["panels"] if p["role"] == "proxy_check"]
        assert (proxy["kind"], proxy["x"], proxy["y"]) == ("scatter", "proxy/poo", "proxy/test_loss")
    assert [m for m in D.metric_names("seqrec", ev)] == ["test/hr@5", "test/hr@10", "test/hr@20", "test/ndcg@5",
                                                         "test/ndcg@10", "test/ndcg@20"]

    # the wandb-workspaces report: the same sections, filters, grouping and panels in the server's format
    sections = grids(spec)
    assert [h for h, _ in sections] == [s["name"] for s in spec["sections"]]
    for (head, meta), s in zip(sections, spec["sections"]):
        (runset,) = meta["runSets"]
        assert "project" not in runset  # offline: no project lookup on the server
        flt = {f["key"]["name"]: f["value"] for f in runset["filters"]["filters"]
               if f["key"]["section"] == "config" and f["op"] == "="}
        assert flt == s["filters"]
        assert runset["grouping"] == [{"section": "config", "name": "selector_name.value"}]
        panels = meta["panelBankSectionConfig"]["panels"]
        bars = [p["config"] for p in panels if p["viewType"] == "Bar Chart"]
        assert [b["metrics"] for b in bars] == [p["metrics"] for p in s["panels"] if p["kind"] == "bar"]
        lines = [p["config"] for p in panels if p["viewType"] == "Run History Line Plot"]
        assert [(c["xAxis"], c["metrics"]) for c in lines] == \
            [(p["x"], p["y"]) for p in s["panels"] if p["kind"] == "line"]
        for c in bars + lines:
            assert (c["groupBy"], c["groupAgg"], c["groupArea"]) == ("selector_name.value", "mean", "stddev")
        (scatter,) = [p["config"] for p in panels if p["viewType"] == "Scatter Plot"]
        assert (scatter["xAxis"], scatter["yAxis"]) == ("summary:proxy/poo", "summary:proxy/test_loss")


def test_group_filter_spread_and_bad_requests(tmp_path, no_network):
    out = tmp_path / "d.json"
    assert D.main(["--task", "ctr", "--group", "table-default", "--spread", "stderr", "--offline",
                   "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    ((_, meta),) = grids(spec)
    flt = meta["runSets"][0]["filters"]["filters"]
    assert {"section": "run", "name": "group"} in [f["key"] for f in flt]
    assert [f["value"] for f in flt if f["key"]["name"] == "group"] == ["table-default"]
    assert {p["config"]["groupArea"] for p in meta["panelBankSectionConfig"]["panels"]
            if "groupArea" in p["config"]} == {"stderr"}
    assert D.main(["--budget", "ctr=many", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(D.DashboardError, match="twice"):
        D.dashboard_plan([{"dataset": "a", "task": "ctr", "budget": 8}] * 2, {})


def test_save_needs_a_login_and_never_goes_online_when_offline(tmp_path, no_network, monkeypatch, capsys):
    out = tmp_path / "d.json"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert D.main(["--task", "seqrec", "--save", "--out", str(out)]) == 0  # WANDB_MODE=offline: spec only
    assert out.exists() and "WANDB_MODE=offline" in capsys.readouterr().err
    out.unlink()
    monkeypatch.delenv("WANDB_MODE")
    # --save without an entity asks the login for one: here wandb.Api fails (no_network), so nothing is saved
    assert D.main(["--task", "seqrec", "--save", "--out", str(out)]) == 1
    assert out.exists() and "not saved to W&B" in capsys.readouterr().err


def test_save_points_the_run_sets_at_the_project(monkeypatch, no_network):
    import wandb_workspaces.reports.v2 as wr

    plan = D.dashboard_plan([{"dataset": "synthetic", "task": "ctr", "budget": 32}], {}, project="proj",
                            entity="me", profile="default")
    saved = []
    monkeypatch.setattr(wr.Report, "save", lambda self, *a, **k: saved.append(self) or self)
    D.save_report(plan)
    (report,) = saved
    assert (report.entity, report.project) == ("me", "proj")
    (grid,) = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert [(r.entity, r.project) for r in grid.runsets] == [("me", "proj")]
    assert "Config(\"budget\") == 32" in grid.runsets[0].filters
    with pytest.raises(D.DashboardError, match="entity"):
        D.build_report({**plan, "entity": None}, online=True)


def test_the_script_writes_the_spec_offline(tmp_path):
    out = tmp_path / "spec.json"
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "wandb_dashboard.py"), "--offline", "--task", "ctr",
                        "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "synthetic / ctr / budget 32" in r.stdout
    assert [s["task"] for s in json.loads(out.read_text())["sections"]] == ["ctr"]


# ------------------------------------------------------------------------------------------ a real pipeline run
SMALL = ["model=tiny", "train=tiny", "train.epochs=2", "train.resume=false", "progress=false",
         "dataset.synthetic.n_users=200", "dataset.synthetic.n_items=160", "task.max_history=3",
         "task.pool.max_train=40", "task.pool.max_test=12", "task.budget=8", "task.itra.max_iters=5",
         "task.itra.cut_num=4", "eval.max_new_tokens=6", "signals.grad_batch_size=8", "train.val_max_samples=8"]


@pytest.mark.slow
def test_a_pipeline_run_logs_what_the_dashboard_reads(tmp_path, hydra_job, monkeypatch):
    """A CTR GORACS job of profile `default` run as a Hydra job: its offline W&B run holds the flat keys (beside
    the nested config), the test/ and proxy/ summary, and the per-class POO series; every name the dashboard's
    section for it plots is in the run, and the run passes the section's filter."""
    from goracs.pipeline import run_all
    from goracs.report.wandb import read_offline_run

    monkeypatch.setenv("WANDB_SILENT", "true")
    over = ["stage=all", f"paths.root_dir={tmp_path}", "profile=default", "task=ctr", "selector=goracs",
            "logger=wandb", *SMALL]
    hydra_job(*over)
    cfg = composed(*over)
    result = run_all(cfg, tmp_path / "run")
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")  # the job's folder
    rec = read_offline_run(run_dir)
    assert rec["complete"]
    keys = {k: rec["config"][k] for k in D.RUN_KEYS}
    assert keys == {"dataset_name": "synthetic", "task_name": "ctr", "profile_name": "default",
                    "selector_name": "goracs", "lam": 0.5, "budget": 8, "seed": 0}
    assert rec["config"]["selector"]["name"] == "goracs" and rec["config"]["task"]["budget"] == 8  # nested stays
    summ = rec["summary"]
    assert summ["test/auc"] == pytest.approx(result["auc"]) and summ["test/logloss"] == pytest.approx(
        result["logloss"])
    assert summ["proxy/poo"] == pytest.approx(result["poo"]) and summ["proxy/test_loss"] == pytest.approx(
        result["test_loss"]) and summ["proxy/poo_lam"] == 0.5
    assert not {"auc", "logloss", "poo", "test_loss"} & set(summ)  # one naming in W&B (metrics.json keeps its own)
    lengths = []
    for cls, name in (("class 0", "poo_class0"), ("class 1", "poo_class1")):
        series = sorted((h[f"{name}/iteration"], h[f"{name}/value"]) for h in rec["history"]
                        if f"{name}/value" in h)
        assert series and series == list(enumerate(result["poo_trajectories"][cls]))
        assert summ[f"{name}/final"] == pytest.approx(result["poo_trajectories"][cls][-1])
        lengths.append(len(series))
    assert max(lengths) >= 2  # a descent, not only a starting value

    # the dashboard for this config: the run passes its section's filter and every plotted name is in the run
    plan = D.dashboard_plan(D.sections_from_config(lambda d, t: cfg, [None], ["ctr"]), None, profile="default")
    (sec,) = plan["sections"]
    assert all(rec["config"][k] == v for k, v in sec["filters"].items())
    logged = set(summ) | {k for h in rec["history"] for k in h}
    plotted = set()
    for p in sec["panels"]:
        y = p.get("y", [])
        plotted |= set(p.get("metrics", [])) | ({y} if isinstance(y, str) else set(y))
        plotted |= {p["x"]} if "x" in p else set()
    assert plotted and plotted <= logged, plotted - logged
