"""The real-data study's report (scripts/real_games_report.py) on hand-made run folders: the lambda curve joins the
table's GORACS rows to the sweep's, job costs come from the stages as built, and a job re-run from stages cached
before their times were recorded is reported as not recorded rather than as its own few seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def _report_module():
    spec = importlib.util.spec_from_file_location("real_games_report", ROOT / "scripts" / "real_games_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, selector: str, seed: int, lam, auc_shift: float, budget: int = 64, **extra):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    p_yes = np.clip(0.5 + (labels - 0.5) * auc_shift + rng.normal(0, 0.2, 200), 0.01, 0.99)
    d = root / name
    d.mkdir(parents=True)
    m = {"dataset": "games_recbole", "task": "ctr", "selector": selector, "budget": budget, "lam": lam, "seed": seed,
         "auc": float(0.6 + auc_shift), "logloss": 0.5, "poo": 0.2 + 0.01 * seed, "test_loss": 0.5 - auc_shift,
         **extra}
    # in a job's order: run_info.json when it starts, predictions.json, then metrics.json when it ends
    (d / "run_info.json").write_text(json.dumps({"git": {"commit": "abc1234def", "dirty": False},
                                                 "argv": ["goracs/__main__.py", "-m", "experiment=x"]}))
    (d / "predictions.json").write_text(json.dumps({"ids": list(range(200)), "labels": labels.tolist(),
                                                    "p_yes": p_yes.tolist()}))
    (d / "metrics.json").write_text(json.dumps(m))
    _age(d)


def _age(d: Path) -> None:
    """Give a run folder's files distinct times in the order a job writes them (file times can tie otherwise)."""
    import os

    for i, name in enumerate(("run_info.json", "predictions.json", "metrics.json")):
        if (d / name).exists():
            os.utime(d / name, (1_000_000 + i, 1_000_000 + i))


def test_report_joins_the_lambda_curve_and_reports_costs_as_built(tmp_path, monkeypatch):
    out, res = tmp_path / "outputs", tmp_path / "results"
    built = {"stage_seconds": {"select": 1.0, "train_wall": 500.0, "train_cpu": 400.0, "evaluate_wall": 300.0,
                               "evaluate_cpu": 250.0, "proxy_wall": 0.0}, "wall_seconds": 2.0, "cpu_seconds": 1.0}
    for s in (0, 1, 2):
        _run(out / "table_real_cpu", f"goracs{s}", "goracs", s, 0.5, 0.1 + 0.01 * s, **built)
        _run(out / "table_real_cpu", f"random{s}", "random", s, None, 0.0, **built)
        _run(out / "sweep_real_cpu", f"lam0.1_{s}", "goracs", s, 0.1, 0.05, **built)
    # an old-format job re-run from its cached stages: its own 3 seconds are not what its results cost
    _run(out / "table_real_cpu", "lam0_0", "goracs_lam0", 0, 0.0, 0.08, wall_seconds=3.0, cpu_seconds=1.0,
         train_report={"cached": True})
    monkeypatch.setattr(sys, "argv", ["x", "--outputs", str(out), "--results", str(res)])
    assert _report_module().main() == 0
    numbers = (res / "numbers.md").read_text()
    # lambda 0 and 0.5 come from the table, 0.1 from the sweep
    lam_rows = [line for line in numbers.splitlines() if line.startswith("| 0.")]
    assert [r.split(" |")[0] for r in lam_rows] == ["| 0.0", "| 0.1", "| 0.5"]
    assert lam_rows[0].endswith("| 1 |") and lam_rows[2].endswith("| 3 |")
    assert lam_rows[0] == "| 0.0 | 0.6800 | 1 |"  # one seed: a mean, no interval
    assert "nan" not in numbers.split("## Sweeps")[1].split("## Proxy check")[0]
    assert (res / "figures" / "ctr_auc_vs_lambda.png").stat().st_size > 0
    assert (res / "figures" / "ctr_auc_diff_vs_random.png").stat().st_size > 0  # both views of each difference
    # costs: stages as built (400 + 250 + 1 CPU s), the re-run cached job not counted
    assert "| ctr | goracs | 64 | 6 | 801 | 651 |" in numbers and "| ctr | random | 64 | 3 | 801 | 651 |" in numbers
    assert "| ctr | goracs_lam0 | 64 | 1 (0 with a recorded cost) | not recorded | not recorded |" in numbers
    assert "1 jobs were re-run from stages cached" in numbers
    # seed by seed: goracs - random = 0.10, 0.11, 0.12: mean 0.11 +- t(0.975, 2) * 0.01 / sqrt(3); goracs_lam0 one seed
    assert "| goracs | 64 | 0: +0.1000, 1: +0.1100, 2: +0.1200 | +0.1100 [+0.0852, +0.1348] |" in numbers
    assert "| goracs_lam0 | 64 | 0: +0.0800 | +0.0800 |" in numbers
    table = (res / "table_ctr.md").read_text()
    assert "code commit(s) abc1234. Command(s):\n1. `python -m goracs -m experiment=x`" in table
    # proxy check: every distinct subset, random's included (lam None): 3 + 3 + 3 + 1 (the POO differs by seed here)
    assert "10 distinct fine-tuned CTR subsets" in numbers and "Random subsets alone (3)" in numbers
    assert "From" not in numbers.split("## Proxy check")[1].split("distinct")[0]  # no proxy runs: no origin line


def test_proxy_points_are_distinct_subsets_by_their_indices(tmp_path):
    mod = _report_module()
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    np.save(a, np.array([5, 1, 9]))
    np.save(b, np.array([9, 5, 1]))  # the same subset in another order (another selector, or a reference run)
    np.save(c, np.array([5, 1, 8]))
    runs = [{"selector": s, "lam": lam, "poo": poo, "coreset": str(f)}
            for s, lam, poo, f in (("goracs", 0.5, 0.2, a), ("goracs_reference", 0.5, 0.2000001, b),
                                   ("random", None, 0.3, c))]
    ids = [mod.subset_id(pd.Series(r)) for r in runs]
    assert ids[0] == ids[1] != ids[2]
    # without a coreset file: selector, lambda and POO (a missing lambda is "-", not dropped)
    assert mod.subset_id(pd.Series({"selector": "random", "lam": None, "poo": 0.3})) == "random|-|0.3"


def test_seqrec_control_reads_ranks_with_intervals_and_agreement(tmp_path):
    """The SeqRec control table: HR / NDCG from the per-sample ranks (with a bootstrap interval), the share of
    test samples whose target rank equals the fine-tuned table run's of the same seed, and the fine-tuned row
    minus the control with its paired interval."""
    mod = _report_module()
    ranks = np.array([0, 3, 7, 50] * 25)  # HR@5 = 0.5, HR@10 = 0.75
    ctrl = tmp_path / "pilot_real_cpu_seqrec" / "seed=0,selector=random"
    tab = tmp_path / "table_real_cpu" / "seqrec_seed=0,selector=random"
    other = ranks.copy()
    other[:10] = 99  # 10 of 100 samples ranked differently by the fine-tuned run
    for d, r, steps in ((ctrl, ranks, 0), (tab, other, 32)):
        d.mkdir(parents=True)
        m = {"dataset": "games_recbole", "task": "seqrec", "selector": "random", "budget": 128, "lam": None,
             "seed": 0, "hr@5": float((r < 5).mean()), "hr@10": float((r < 10).mean()), "ndcg@5": 0.0,
             "ndcg@10": 0.0, "train_report": {"steps": steps}}
        (d / "metrics.json").write_text(json.dumps(m))
        (d / "predictions.json").write_text(json.dumps({"task": "seqrec", "ids": list(range(100)),
                                                        "rank": r.tolist()}))
        (d / "run_info.json").write_text(json.dumps({"git": {"commit": "abc1234def", "dirty": False},
                                                     "argv": ["goracs/__main__.py", "-m", "experiment=x"]}))
    text = mod.seqrec_control_table(tmp_path / "pilot_real_cpu_seqrec", mod.collect([tmp_path / "table_real_cpu"]))
    row = next(line for line in text.splitlines() if line.startswith("| zero-shot"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "zero-shot (no fine-tuning), seed 0" and cells[1].startswith("0.5000 [")
    assert cells[2].startswith("0.7500 [") and cells[5] == "random 90%"
    lo, hi = (float(x) for x in cells[1].split("[")[1].rstrip("]").split(","))
    assert lo < 0.5 < hi and hi - lo < 0.3
    ndcg10 = np.mean(np.where(ranks < 10, 1 / np.log2(ranks + 2.0), 0.0))
    assert cells[4].startswith(f"{ndcg10:.4f} [")
    # fine-tuned minus control: the 10 re-ranked samples held 6 of the control's HR@5 hits, so HR@5 falls by 0.06,
    # all in one direction: the paired interval excludes 0
    gain = next(line for line in text.splitlines() if line.startswith("| random 128 (0) |"))
    d_hr5 = [c.strip() for c in gain.strip("|").split("|")][1]
    assert d_hr5.startswith("-0.0600 [") and d_hr5.endswith("] *")
    assert float(d_hr5.split("[")[1].split(",")[1].split("]")[0]) < 0
    assert "No SeqRec control runs yet." in mod.seqrec_control_table(tmp_path / "missing", pd.DataFrame())


def test_seed_by_seed_differences_count_wins_and_test_them_by_signed_ranks():
    """Hand-made per-seed AUCs: GORACS above random on all 6 seeds (the exact two-sided signed-rank p of 6 positive
    differences is 2 / 2**6 = 0.03125), k-center below on 2 of 3 (p 0.75), the mean difference and its t interval
    as computed by hand."""
    rep = _report_module()
    rand = [0.55, 0.60, 0.50, 0.58, 0.52, 0.57]
    gor = [0.56, 0.63, 0.53, 0.62, 0.57, 0.63]  # +0.01 .. +0.06, all distinct
    kc = [0.54, 0.55, 0.52]  # -0.01, -0.05, +0.02: W+ = 2, P(W+ <= 2) = 3 / 8, two-sided 0.75
    rows = ([{"task": "ctr", "selector": "random", "budget": 64, "seed": s, "auc": a} for s, a in enumerate(rand)]
            + [{"task": "ctr", "selector": "goracs", "budget": 64, "seed": s, "auc": a} for s, a in enumerate(gor)]
            + [{"task": "ctr", "selector": "kcenter", "budget": 64, "seed": s, "auc": a} for s, a in enumerate(kc)])
    out = rep.seed_paired(pd.DataFrame(rows)).splitlines()
    g = next(line for line in out if line.startswith("| goracs |")).split(" | ")
    assert g[4] == "6 of 6" and g[5] == "0.031"
    d = np.array(gor) - np.array(rand)
    half = 2.5706 * d.std(ddof=1) / np.sqrt(6)  # t quantile, 5 degrees of freedom
    assert g[3] == f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"
    assert g[6] == f"{np.std(gor, ddof=1):.4f} ({np.std(rand, ddof=1):.4f})"
    # Levene (median-centred) by hand: a one-way ANOVA on the absolute deviations from each group's median
    dev = [np.abs(np.array(x) - np.median(x)) for x in (gor, rand)]
    grand = np.concatenate(dev).mean()
    between = sum(len(x) * (x.mean() - grand) ** 2 for x in dev) / 1
    within = sum(((x - x.mean()) ** 2).sum() for x in dev) / (12 - 2)
    from scipy import stats
    assert g[7] == f"{stats.f.sf(between / within, 1, 10):.3f} |"
    k = next(line for line in out if line.startswith("| kcenter |")).split(" | ")
    assert k[4] == "1 of 3" and k[5] == "0.750"
    # a stale copy of a run (older) does not count, and GORACS at another lambda is its own row, named by lambda
    for r in rows:
        r["_mtime"], r["lam"] = 2.0, (0.5 if r["selector"] == "goracs" else None)
    stale = {"task": "ctr", "selector": "goracs", "budget": 64, "seed": 0, "auc": 0.10, "_mtime": 1.0, "lam": 0.5}
    other = [{"task": "ctr", "selector": "goracs", "budget": 64, "seed": s, "auc": a - 0.01, "_mtime": 2.0, "lam": 1.0}
             for s, a in enumerate(rand)]
    out = rep.seed_paired(pd.DataFrame(rows + [stale] + other)).splitlines()
    g = next(line for line in out if line.startswith("| goracs (lambda 0.5) |")).split(" | ")
    assert g[3].startswith(f"{d.mean():+.4f} [") and g[4] == "6 of 6"
    assert next(line for line in out if line.startswith("| goracs (lambda 1.0) |")).split(" | ")[4] == "0 of 6"


@pytest.mark.slow  # one tiny zero-shot pipeline job
def test_coreset_classes_are_read_from_the_pool_the_run_drew(tmp_path):
    """The positives of a finished run's coreset, recounted from its coreset indices and the pool its recorded
    config draws, equal the labels of those pool samples; the proxy check names and drops one-class subsets."""
    from test_pipeline import config

    from goracs.pipeline import pool, run_all, run_prepare

    mod = _report_module()
    cfg = config(tmp_path, "task=ctr", "selector=random", "train.epochs=0", "+train.task_overrides.ctr.epochs=0")
    res = run_all(cfg, tmp_path / "runs" / "seed=0,selector=random")
    runs = mod.collect([tmp_path / "runs"])
    classes = mod.coreset_classes(runs)
    y = pool(cfg, run_prepare(cfg))["train"]["label"].to_numpy()
    idx = np.load(res["coreset"])
    (d, (k, n, share)), = classes.items()
    assert (k, n) == (int((y[idx] == 1).sum()), len(idx)) and share == pytest.approx(float((y == 1).mean()))
    assert f"0: {k} of {n}" in mod.coreset_positives(runs, classes)


def test_proxy_check_reports_the_correlation_without_one_class_subsets(tmp_path):
    """Five two-class subsets whose POO orders their test loss exactly, two one-class subsets with the lowest POO and
    the highest loss, and one of unknown classes: with all, the correlation is weak; over the five known two-class
    subsets it is 1, and the others are named."""
    mod = _report_module()
    rows, classes = [], {}
    for i, (sel, poo, loss, pos) in enumerate([("random", 0.30 + 0.01 * j, 0.50 + 0.01 * j, 50) for j in range(5)]
                                              + [("grand", 0.10, 5.8, 0), ("el2n", 0.11, 5.9, 0)]):
        d = str(tmp_path / f"r{i}")
        rows.append({"task": "ctr", "budget": 64, "selector": sel, "lam": None, "seed": i, "poo": poo,
                     "test_loss": loss, "run_dir": d})
        classes[d] = (pos, 64, 0.78)
    # a subset whose classes are not known (its pool could not be loaded) is in neither group: it would break the
    # perfect order of the two-class subsets
    rows.append({"task": "ctr", "budget": 64, "selector": "random", "lam": None, "seed": 9, "poo": 0.2,
                 "test_loss": 0.9, "run_dir": str(tmp_path / "unknown")})
    (tmp_path / "figs").mkdir()
    text = mod.proxy(pd.DataFrame(rows), tmp_path / "figs", classes)
    assert "8 distinct fine-tuned CTR subsets" in text
    assert ("Without the 2 subsets that hold one class only (el2n, grand; 1 whose classes are not known are left "
            "out) (5 subsets): 1.000 [") in text
    rho = float(text.split("test loss ")[1].split(",")[0])
    assert rho < 0.5


def test_differences_figure_for_seqrec_reads_its_table_and_names_the_metric(tmp_path):
    """The SeqRec figure reads table_seqrec.csv's HR@10 differences (with the seed-by-seed rows given) and is named
    without the '@'; a task without a table and without rows writes nothing."""
    mod = _report_module()
    pd.DataFrame([{"selector": "goracs", "budget": 128, "reference_budget": 128, "hr@10_diff": 0.004,
                   "hr@10_diff_lo": -0.002, "hr@10_diff_hi": 0.012}]).to_csv(tmp_path / "table_seqrec.csv", index=False)
    seed_rows = [{"label": "goracs (128)", "view": "seed by seed (t over seeds)", "diff": 0.004, "lo": -0.02,
                  "hi": 0.03}]
    text = mod.differences_figure(tmp_path, seed_rows, tmp_path, metric="hr@10", task="seqrec")
    assert text == "Figure: `figures/seqrec_hr10_diff_vs_random.png`.\n"
    assert (tmp_path / "seqrec_hr10_diff_vs_random.png").stat().st_size > 0
    assert mod.differences_figure(tmp_path / "none", [], tmp_path, task="ctr") == ""


def test_each_section_takes_its_runs_from_one_read(tmp_path):
    """`under` splits the one collection of runs by folder (by path component: a sibling folder whose name starts
    the same is not inside), so the tables, the sweeps and the proxy check all see the same finished jobs."""
    mod = _report_module()
    out = tmp_path / "outputs"
    _run(out / "table_real_cpu", "a", "goracs", 0, 0.5, 0.1)
    _run(out / "table_real_cpu" / "deeper", "b", "random", 0, None, 0.0)
    _run(out / "table_real_cpu_extra", "c", "random", 1, None, 0.0)
    _run(out / "sweep_real_cpu", "d", "goracs", 0, 0.1, 0.05)
    runs = mod.collect([out])
    assert sorted(mod.under(runs, out / "table_real_cpu")["selector"]) == ["goracs", "random"]
    assert mod.under(runs, out / "sweep_real_cpu")["lam"].tolist() == [0.1]
    assert mod.under(runs, out / "proxy_real_cpu").empty and mod.under(pd.DataFrame(), out).empty


def test_sweeps_report_each_point_minus_random_both_ways(tmp_path, monkeypatch):
    """The sweeps section reads every lambda and every budget against random at the same budget and seeds: seed by
    seed (t over seeds) and over test samples (paired bootstrap); the lambda figure carries random as a band."""
    out, res = tmp_path / "outputs", tmp_path / "results"
    for s in (0, 1, 2):
        _run(out / "table_real_cpu", f"goracs{s}", "goracs", s, 0.5, 0.1)
        _run(out / "table_real_cpu", f"random{s}", "random", s, None, 0.0)
        _run(out / "sweep_real_cpu", f"lam1_{s}", "goracs", s, 1.0, 0.05 + 0.01 * s)
        _run(out / "sweep_real_cpu", f"lam01_{s}", "goracs", s, 0.1, 0.0)
        for b in (32, 128):
            _run(out / "sweep_real_cpu", f"r{b}_{s}", "random", s, None, 0.0, budget=b)
            _run(out / "sweep_real_cpu", f"g{b}_{s}", "goracs", s, 0.5, 0.3 if b == 128 else -0.2, budget=b)
    _run(out / "proxy_real_cpu", "p8", "random", 8, None, 0.02)
    monkeypatch.setattr(sys, "argv", ["x", "--outputs", str(out), "--results", str(res)])
    assert _report_module().main() == 0
    numbers = (res / "numbers.md").read_text()
    sweep = numbers.split("## Sweeps")[1].split("## Proxy check")[0]
    assert numbers.split("## Proxy check")[1].lstrip().startswith(
        "From 1 runs in `proxy_real_cpu/`; seeds 8; code commit(s) abc1234.")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): [c.strip() for c in line.strip("|").split("|")]
            for line in sweep.splitlines() if line.startswith("| goracs |")}
    # lambda 1: AUC 0.65, 0.66, 0.67 against random's 0.6 at each seed: +0.06 +- t(0.975, 2) * 0.01 / sqrt(3)
    lam1 = rows[("goracs", "64", "1.0")]
    assert lam1[3] == "3" and lam1[4] == "+0.0600 [+0.0352, +0.0848]"
    lo, hi = (float(x) for x in lam1[5].split("[")[1].rstrip("]").split(","))
    assert 0 < lo < hi  # a wider gap between the classes on the same samples: above random over test samples too
    assert rows[("goracs", "64", "0.5")][4] == "+0.1000 [+0.1000, +0.1000]"
    # the budget sweep: above random at 128, below at 32, each against random at its own budget
    assert rows[("goracs", "128", "0.5")][4].startswith("+0.3000")
    assert rows[("goracs", "32", "0.5")][4].startswith("-0.2000")
    hi32 = float(rows[("goracs", "32", "0.5")][5].split(",")[1].rstrip("]"))
    assert hi32 < 0
    assert (res / "figures" / "ctr_auc_vs_budget.png").stat().st_size > 0
    assert (res / "figures" / "ctr_auc_vs_lambda.png").stat().st_size > 0
    # with no recorded values, the one budget table lists the archived runs per seed (0.6 + 0.3 at 128)
    assert "| goracs | 128 | 0: 0.900, 1: 0.900, 2: 0.900 | 0.9000 [0.9000, 0.9000] | 3 archived |" in sweep
    assert "| 128 | 0: +0.300, 1: +0.300, 2: +0.300 |" in sweep
    # every sweep point names its seeds, commit and command; the table's points say where they come from
    assert "From 18 runs in `sweep_real_cpu/`; seeds 0, 1, 2; code commit(s) abc1234." in sweep
    # the lambdas side by side at their common seeds; every seed ranks them 0.1 < 1 < 0.5: Friedman chi-square
    # 12 / (n k (k + 1)) * (3^2 + 6^2 + 9^2) - 3 n (k + 1) = 6 with n = k = 3, p = exp(-6 / 2)
    assert ("mean AUC by lambda: 0.1: 0.6000, 0.5: 0.7000, 1.0: 0.6600. Friedman test across the 3 lambdas, "
            "blocked by seed: chi-square 6.00, p 0.050.") in sweep
    for row in ("`goracs` 64, lambda 1.0", "`goracs` 128, lambda 0.5", "`random` 32"):
        assert f"- {row}: seeds 0-2 at abc1234 by command 1" in sweep
    assert "random 64, are the CTR table's runs" in sweep


def test_report_archives_finished_runs_and_regenerates_from_the_archive_alone(tmp_path, monkeypatch):
    """The report copies each finished run's metrics, predictions and run_info into results/.../runs/ (stage
    artifacts named metrics.json are not runs) and reads only that archive: with outputs/ gone (a fresh clone), the
    same command writes the same numbers."""
    out, res = tmp_path / "outputs", tmp_path / "results"
    for s in (0, 1, 2):
        _run(out / "table_real_cpu", f"goracs{s}", "goracs", s, 0.5, 0.1 + 0.01 * s)
        _run(out / "table_real_cpu", f"random{s}", "random", s, None, 0.0)
    (out / "table_real_cpu" / "goracs0" / "adapter").mkdir()
    (out / "table_real_cpu" / "goracs0" / "adapter" / "weights.bin").write_bytes(b"x" * 100)
    stage = out / "table_real_cpu" / "goracs0" / "eval"
    stage.mkdir()
    (stage / "metrics.json").write_text(json.dumps({"auc": 0.1}))  # a stage's file: no dataset / task / selector
    _run(out / "scratch_elsewhere", "r", "random", 9, None, 0.0)  # not a study folder: not archived
    mod = _report_module()
    monkeypatch.setattr(sys, "argv", ["x", "--outputs", str(out), "--results", str(res)])
    assert mod.main() == 0
    first = (res / "numbers.md").read_text()
    archived = sorted(p.relative_to(res / "runs").as_posix() for p in (res / "runs").rglob("*") if p.is_file())
    assert len(archived) == 18 and "table_real_cpu/goracs0/metrics.json" in archived
    assert not any("adapter" in a or "eval" in a or "scratch" in a for a in archived)
    import shutil
    shutil.rmtree(out)
    monkeypatch.setattr(sys, "argv", ["x", "--outputs", str(out), "--results", str(res)])
    assert mod.main() == 0
    assert (res / "numbers.md").read_text() == first
    assert "| goracs | 64 | 0: +0.1000, 1: +0.1100, 2: +0.1200 |" in first


def test_archive_is_idempotent_replaces_re_run_files_and_names_bad_json(tmp_path):
    from goracs.report.archive import archive_runs

    out, arc = tmp_path / "outputs", tmp_path / "runs"
    _run(out / "sweep_real_cpu", "a", "random", 0, None, 0.0)
    _run(out / "sweep_real_cpu", "b", "goracs", 0, 0.5, 0.1)
    first = archive_runs(out, arc, ["sweep_real_cpu", "missing_folder"])
    assert sorted(first.added) == ["sweep_real_cpu/a", "sweep_real_cpu/b"] and not first.updated
    again = archive_runs(out, arc, ["sweep_real_cpu"])
    assert again.unchanged == 2 and not again.added and not again.updated
    # a re-run writes new predictions, then metrics: the archive follows; a run gone from outputs/ stays archived
    (out / "sweep_real_cpu" / "a" / "predictions.json").write_text('{"ids": [], "labels": [], "p_yes": []}')
    _age(out / "sweep_real_cpu" / "a")
    import shutil
    shutil.rmtree(out / "sweep_real_cpu" / "b")
    third = archive_runs(out, arc, ["sweep_real_cpu"])
    assert third.updated == ["sweep_real_cpu/a"] and third.unchanged == 0
    assert (arc / "sweep_real_cpu" / "a" / "predictions.json").read_text().startswith('{"ids": []')
    assert (arc / "sweep_real_cpu" / "b" / "metrics.json").exists()
    (out / "sweep_real_cpu" / "a" / "metrics.json").write_text("{half")
    with pytest.raises(ValueError, match=r"sweep_real_cpu/a/metrics.json: not valid JSON"):
        archive_runs(out, arc, ["sweep_real_cpu"])


def test_runs_found_twice_count_at_their_recorded_run_time_not_file_time(tmp_path):
    """In a clone every file has the checkout's time: which of two copies of a job is newest comes from the time
    its run_info.json records."""
    from goracs.report.aggregate import collect, task_runs

    root = tmp_path / "runs"
    _run(root / "table_real_cpu", "old", "random", 0, None, 0.0)
    _run(root / "sweep_real_cpu", "new", "random", 0, None, 0.2)
    for name, stamp in (("table_real_cpu/old", "2026-11-30T10:00:00+00:00"),
                        ("sweep_real_cpu/new", "2026-12-01T10:00:00+00:00")):
        info = root / name / "run_info.json"
        info.write_text(json.dumps({**json.loads(info.read_text()), "time": stamp}))
    import os
    os.utime(root / "sweep_real_cpu" / "new" / "metrics.json", (1, 1))  # the newer run has the older file
    kept = task_runs(collect([root]), "ctr")
    assert len(kept) == 1 and kept["run_dir"].iloc[0].endswith("new")


def test_the_archive_covers_every_study_folder_the_experiments_write():
    """Each real_cpu experiment's multirun folder is one the report archives (a new experiment folder must be added
    to STUDY_FOLDERS, or its runs would live only in outputs/)."""
    import re

    mod = _report_module()
    dirs = set()
    for cfg in (ROOT / "configs" / "experiment").glob("*real_cpu*.yaml"):
        m = re.search(r"dir: \$\{paths\.output_dir\}/(\S+)", cfg.read_text())
        assert m, cfg
        dirs.add(m.group(1))
    assert dirs and dirs <= set(mod.STUDY_FOLDERS)


def test_budget_sweep_joins_archived_runs_and_recorded_values_of_lost_ones(tmp_path, monkeypatch):
    """Lost runs' per-seed AUCs (a CSV naming each value's source) and archived runs make one budget sweep: an
    archived re-run of a recorded job wins and both are printed; GORACS minus random is read per budget, seed by
    seed, wherever either source has both rows."""
    out, res = tmp_path / "outputs", tmp_path / "results"
    for s in (0, 1, 2):  # archived: GORACS 128 at 0.6 + 0.01 s + 0.1; random 32 seeds 0 and 2
        _run(out / "sweep_real_cpu", f"g128_{s}", "goracs", s, 0.5, 0.1 + 0.01 * s, budget=128)
    for s in (0, 2):
        _run(out / "sweep_real_cpu", f"r32_{s}", "random", s, None, -0.1, budget=32)
    rec = res / "sessions_1-7" / "recorded_per_seed_auc.csv"
    rec.parent.mkdir(parents=True)
    rows = ["task,selector,budget,lam,seed,auc,source"]
    rows += [f"ctr,random,128,,{s},{a},old README" for s, a in ((0, 0.6), (1, 0.62), (2, 0.61))]
    rows += [f"ctr,goracs,32,0.5,{s},0.55,old README" for s in (0, 1, 2)]
    rows += ["ctr,random,32,,0,0.499,old README", "ctr,random,32,,1,0.45,old README",
             "ctr,goracs,64,0.1,0,0.9,another lambda: not in the budget sweep"]
    rec.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(sys, "argv", ["x", "--outputs", str(out), "--results", str(res)])
    assert _report_module().main() == 0
    sweep = (res / "numbers.md").read_text().split("## Sweeps")[1].split("## Proxy check")[0]
    assert "| random | 32 | 0 | 0.499 | 0.5000 | +0.001 |" in sweep  # the re-run beside its recorded value
    assert "| random | 32 | 0: 0.500, 1: 0.450, 2: 0.500 |" in sweep and "| 2 archived, 1 recorded |" in sweep
    assert "| goracs | 128 | 0: 0.700, 1: 0.710, 2: 0.720 | 0.7100 [0.6852, 0.7348] | 3 archived |" in sweep
    assert "| random | 128 | 0: 0.600, 1: 0.620, 2: 0.610 | 0.6100 [0.5852, 0.6348] | 3 recorded |" in sweep
    assert "| 128 | 0: +0.100, 1: +0.090, 2: +0.110 | +0.1000 [+0.0752, +0.1248] | 3 of 3 |" in sweep
    assert "| 32 | 0: +0.050, 1: +0.100, 2: +0.050 |" in sweep
    # the 6 pairs together: +0.05, +0.10, +0.05, +0.10, +0.09, +0.11: SD 0.0266, t(0.975, 5) 2.571 / sqrt(6);
    # every one above: Wilcoxon p = 2 / 2^6
    assert "All 2 budgets together, 6 (budget, seed) pairs" in sweep
    assert "+0.0833 [+0.0554, +0.1112] [95 % t over the pairs], above random in 6 of 6, Wilcoxon signed-rank p 0.031." in sweep
    assert "| goracs | 64 |" not in sweep  # lambda 0.1 is not the budget sweep's GORACS
    assert (res / "figures" / "ctr_auc_vs_budget.png").stat().st_size > 0


def test_recorded_values_name_the_file_line_and_field_when_bad(tmp_path):
    mod = _report_module()
    bad = tmp_path / "rec.csv"
    bad.write_text("task,selector,budget,lam,seed,auc,source\nctr,random,32,,0,0.41,x\nctr,random,32,,1,high,x\n")
    with pytest.raises(ValueError, match=r"rec.csv: line 3, field auc: 'high' is not a number"):
        mod.load_recorded(bad)
    bad.write_text("task,selector,budget,seed,auc\nctr,random,32,0,0.4\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) lam, source"):
        mod.load_recorded(bad)
    assert mod.load_recorded(tmp_path / "absent.csv").empty


def test_archive_waits_for_incomplete_or_re_running_folders_and_copies_metrics_last(tmp_path, monkeypatch):
    """A folder missing a file, or whose run_info.json is newer than its metrics.json (a job re-running into it:
    the old results beside the new run's record), is named and left out; every archived run is written with
    metrics.json last, so an archived metrics.json always has its other files beside it; the run's coreset indices
    travel with it."""
    import os

    from goracs.report import archive

    out, arc = tmp_path / "outputs", tmp_path / "runs"
    idx = tmp_path / "cache" / "select" / "k" / "indices.npy"
    idx.parent.mkdir(parents=True)
    np.save(idx, np.array([5, 3, 9]))
    _run(out / "table_real_cpu", "ok", "goracs", 0, 0.5, 0.1, coreset=str(idx))
    _run(out / "table_real_cpu", "nopred", "random", 0, None, 0.0)
    (out / "table_real_cpu" / "nopred" / "predictions.json").unlink()
    _run(out / "table_real_cpu", "rerun", "random", 1, None, 0.0)
    os.utime(out / "table_real_cpu" / "rerun" / "run_info.json", (2_000_000, 2_000_000))  # a new run started
    order = []
    real_copy = archive._copy
    monkeypatch.setattr(archive, "_copy", lambda data, dest: order.append(dest.name) or real_copy(data, dest))
    rep = archive.archive_runs(out, arc, ["table_real_cpu"])
    assert rep.added == ["table_real_cpu/ok"]
    assert sorted(s.split(": ", 1)[1] for s in rep.skipped) == [
        "a re-run is in progress (run_info.json or predictions.json newer than metrics.json)", "no predictions.json"]
    assert "nopred" in rep.summary() and "rerun" in rep.summary()
    assert order[-1] == "metrics.json" and set(order) == {"coreset_indices.npy", *archive.RUN_FILES}
    assert np.load(arc / "table_real_cpu" / "ok" / "coreset_indices.npy").tolist() == [5, 3, 9]
    # with the cache gone (a clone), the report still identifies the subset from the archived copy
    mod = _report_module()
    runs = mod.collect([arc])
    before = mod.subset_id(runs.iloc[0])
    import shutil
    shutil.rmtree(tmp_path / "cache")
    assert mod.subset_id(mod.collect([arc]).iloc[0]) == before and "|" not in before


def test_recorded_csv_refuses_duplicates_and_non_integers_and_a_named_missing_file(tmp_path):
    mod = _report_module()
    bad = tmp_path / "rec.csv"
    head = "task,selector,budget,lam,seed,auc,source\n"
    bad.write_text(head + "ctr,random,32,,0,0.41,x\n\nctr,random,32,,0,0.42,y\n")
    with pytest.raises(ValueError, match=r"rec.csv: line 4 repeats the job of line 2"):
        mod.load_recorded(bad)
    bad.write_text(head + "ctr,random,32,,1.5,0.41,x\n")
    with pytest.raises(ValueError, match=r"line 2, field seed: '1.5' is not an integer"):
        mod.load_recorded(bad)
    with pytest.raises(FileNotFoundError, match="absent.csv: no such file"):
        mod.load_recorded(tmp_path / "absent.csv", required=True)


def test_a_clone_with_only_recorded_values_still_reports_the_budget_sweep(tmp_path):
    mod = _report_module()
    rec = tmp_path / "rec.csv"
    rec.write_text("task,selector,budget,lam,seed,auc,source\n" + "".join(
        f"ctr,{sel},{b},{lam},{s},{0.5 + 0.01 * s + (0.05 if sel == 'goracs' else 0)},x\n"
        for sel, lam in (("goracs", "0.5"), ("random", "")) for b in (32, 64) for s in (0, 1)))
    notes = "\n".join(mod.sweeps(pd.DataFrame(), tmp_path, tmp_path / "sweep", None, mod.load_recorded(rec)))
    assert "| 32 | 0: +0.050, 1: +0.050 |" in notes and "| random | 64 | 0: 0.500, 1: 0.510 |" in notes
