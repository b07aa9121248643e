"""Aggregation of run folders into the results tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from goracs.report.aggregate import collect, summarise, to_markdown, write_tables


def fake_runs(root):
    rng = np.random.default_rng(0)
    truth = {}
    k = 0
    for sel in ("goracs", "random"):
        for seed in (0, 1, 2):
            k += 1
            hr = {"goracs": 0.30, "random": 0.20}[sel] + 0.01 * seed
            auc = {"goracs": 0.70, "random": 0.65}[sel] - 0.02 * seed
            ll = {"goracs": 0.50, "random": 0.60}[sel] + 0.01 * seed
            for task, m in (("seqrec", {"hr@5": hr, "hr@10": hr + 0.1, "ndcg@5": hr / 2, "ndcg@10": hr / 2 + 0.05}),
                            ("ctr", {"auc": auc, "logloss": ll})):
                d = root / f"run{k}_{task}"
                d.mkdir(parents=True)
                (d / "metrics.json").write_text(json.dumps({"dataset": "synthetic", "task": task, "selector": sel,
                                                            "budget": 64, "lam": 0.5 if sel == "goracs" else None,
                                                            "seed": seed, **m, "poo_trajectory": [1.0, 0.9]}))
                truth.setdefault((task, sel), []).append(m)
    # a stage artifact that is not a run summary must be ignored
    (root / "cache").mkdir()
    (root / "cache" / "metrics.json").write_text(json.dumps({"auc": 0.1}))
    return truth


def test_summary_numbers(tmp_path):
    truth = fake_runs(tmp_path)
    runs = collect([tmp_path])
    assert len(runs) == 12
    s = summarise(runs, "ctr").set_index("selector")
    for sel in ("goracs", "random"):
        aucs = [m["auc"] for m in truth[("ctr", sel)]]
        assert np.isclose(s.loc[sel, "auc_mean"], np.mean(aucs))
        assert np.isclose(s.loc[sel, "auc_std"], np.std(aucs, ddof=1))
        assert s.loc[sel, "seeds"] == 3
    q = summarise(runs, "seqrec").set_index("selector")
    assert np.isclose(q.loc["random", "ndcg@10_mean"], np.mean([m["ndcg@10"] for m in truth[("seqrec", "random")]]))


def test_best_marked_and_lower_is_better(tmp_path):
    fake_runs(tmp_path)
    s = summarise(collect([tmp_path]), "ctr")
    md = to_markdown(s, "ctr")
    goracs_row = next(line for line in md.splitlines() if "| goracs |" in line)
    random_row = next(line for line in md.splitlines() if "| random |" in line)
    # goracs has the higher AUC and the lower log-loss: both bold; random neither
    assert goracs_row.count("**") == 4 and "**" not in random_row


def test_write_tables_and_rerun_counts_once(tmp_path):
    fake_runs(tmp_path / "runs")
    # a re-run of a finished job (same group and seed) must not double-count
    dup = tmp_path / "runs" / "rerun"
    dup.mkdir()
    src = next((tmp_path / "runs").glob("run1_seqrec"))
    (dup / "metrics.json").write_text((src / "metrics.json").read_text())
    out = write_tables([tmp_path / "runs"], tmp_path / "results")
    assert out["seqrec"]["seeds"].tolist() == [3, 3]
    csv = pd.read_csv(tmp_path / "results" / "table_seqrec.csv")
    assert set(csv["selector"]) == {"goracs", "random"}
    md = (tmp_path / "results" / "table_ctr.md").read_text()
    assert md.startswith("# ctr results")
    # provenance: every ctr run counted, its seeds, and the commit (none recorded in these fake runs)
    assert "From 6 runs in `runs/`; seeds 0, 1, 2; code commit(s) unknown." in md


def test_provenance_reads_the_commits_of_the_runs(tmp_path):
    fake_runs(tmp_path / "runs")
    for k, d in enumerate(sorted((tmp_path / "runs").glob("run*_ctr"))):
        git = {"commit": "abcdef1234567890", "dirty": k == 0}
        argv = ["/x/goracs/__main__.py", "-m", "experiment=table_x", "seed=0,1,2"]
        (d / "run_info.json").write_text(json.dumps({"seed": 0, "git": git, "argv": argv}))
    write_tables([tmp_path / "runs"], tmp_path / "results")
    md = (tmp_path / "results" / "table_ctr.md").read_text()
    assert ("code commit(s) abcdef1, abcdef1+dirty. Command(s):\n"
            "1. `python -m goracs -m experiment=table_x seed=0,1,2`") in md
    assert "Command" not in (tmp_path / "results" / "table_seqrec.md").read_text()  # its runs record no argv


def test_every_row_names_its_seeds_commits_and_commands(tmp_path):
    """Two commits and two commands ran one row's seeds: the md and the csv say which ran which."""
    fake_runs(tmp_path / "runs")
    dirs = sorted((tmp_path / "runs").glob("run*_ctr"))  # run1-3: goracs seeds 0-2; run4-6: random seeds 0-2
    for k, d in enumerate(dirs):
        late = k in (2, 5)  # seed 2 of each row ran later, from another commit and command
        git = {"commit": ("2222222" if late else "1111111") + "abcdef", "dirty": False}
        argv = ["/x/goracs/__main__.py", "-m", "experiment=table_seeds" if late else "experiment=table_x"]
        (d / "run_info.json").write_text(json.dumps({"git": git, "argv": argv}))
    (dirs[0] / "run_info.json").unlink()  # a run without a record is named, not dropped
    write_tables([tmp_path / "runs"], tmp_path / "results")
    md = (tmp_path / "results" / "table_ctr.md").read_text()
    assert "1. `python -m goracs -m experiment=table_seeds`\n2. `python -m goracs -m experiment=table_x`" in md
    assert ("- `goracs` 64, lambda 0.5: seeds 0 at unknown; 1 at 1111111 by command 2; 2 at 2222222 by command 1"
            in md)
    assert "- `random` 64: seeds 0-1 at 1111111 by command 2; 2 at 2222222 by command 1" in md
    assert md.index("- `random` 64:") < md.index("| dataset |")
    csv = pd.read_csv(tmp_path / "results" / "table_ctr.csv").set_index("selector")
    assert csv.loc["random", "origin"] == "seeds 0-1 at 1111111 by command 2; 2 at 2222222 by command 1"


def test_write_tables_uses_the_runs_it_is_given(tmp_path):
    """A report reads the runs once: a job that finishes after that read is in none of the tables it writes."""
    fake_runs(tmp_path / "runs")
    runs = collect([tmp_path / "runs"])
    late = tmp_path / "runs" / "late"  # finished after the report read the runs
    late.mkdir()
    src = next((tmp_path / "runs").glob("run1_ctr"))
    m = json.loads((src / "metrics.json").read_text())
    (late / "metrics.json").write_text(json.dumps({**m, "selector": "latecomer"}))
    write_tables([tmp_path / "runs"], tmp_path / "results", runs=runs)
    assert "latecomer" not in (tmp_path / "results" / "table_ctr.md").read_text()
    assert "From 6 runs in `runs/`" in (tmp_path / "results" / "table_ctr.md").read_text()
    write_tables([tmp_path / "runs"], tmp_path / "results")  # without: collected when called
    assert "| latecomer |" in (tmp_path / "results" / "table_ctr.md").read_text()


def test_a_task_without_runs_keeps_its_table(tmp_path):
    fake_runs(tmp_path / "runs")
    for d in (tmp_path / "runs").glob("run*_seqrec"):  # only the CTR half was re-run
        (d / "metrics.json").unlink()
    out = tmp_path / "results"
    out.mkdir()
    (out / "table_seqrec.md").write_text("earlier SeqRec table\n")
    write_tables([tmp_path / "runs"], out)
    assert (out / "table_seqrec.md").read_text() == "earlier SeqRec table\n"
    assert "| goracs |" in (out / "table_ctr.md").read_text()


def test_metrics_and_cut_offs_come_from_the_eval_config(tmp_path):
    from goracs.evaluate.metrics import MetricError, main_metric, metric, task_metrics

    assert [m.name for m in task_metrics("seqrec", {"ks": [20], "metrics": {"seqrec": ["hr", "ndcg"]}})] == \
        ["hr@20", "ndcg@20"]
    assert main_metric("seqrec", {"ks": [5, 10], "main_metric": {"seqrec": "ndcg"}}).name == "ndcg@10"
    assert metric("logloss").higher_is_better is False and metric("ndcg@20").higher_is_better is True
    import pytest

    with pytest.raises(MetricError, match="not a ctr metric"):
        task_metrics("ctr", {"metrics": {"ctr": ["ndcg"]}})
    # runs evaluated with eval.ks=[20]: the table reports HR@20 and NDCG@20
    for sel, seed, hr in (("goracs", 0, 0.5), ("goracs", 1, 0.7), ("random", 0, 0.2)):
        d = tmp_path / f"{sel}{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "dataset": "synthetic", "task": "seqrec", "selector": sel, "budget": 8, "lam": None, "seed": seed,
            "hr@20": hr, "ndcg@20": hr / 2, "hr@10": 0.0,
            "config": {"eval": {"ks": [20], "metrics": {"seqrec": ["hr", "ndcg"]}}}}))
    out = tmp_path / "results"
    tables = write_tables([tmp_path], out)
    md = (out / "table_seqrec.md").read_text()
    assert "| HR@20 | NDCG@20 |" in md and "HR@10" not in md
    assert np.isclose(tables["seqrec"].set_index("selector").loc["goracs", "hr@20_mean"], 0.6)


def _ctr_runs_with_predictions(root, shift: dict[str, float], n: int = 600):
    """CTR runs of several selectors on one test set: P(Yes) = sigmoid(signal * label + noise), with a larger
    signal for a better selector; predictions.json as the pipeline writes it."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    for sel, sig in shift.items():
        for seed in (0, 1, 2):
            p = 1 / (1 + np.exp(-(sig * (2 * y - 1) + rng.normal(0, 1, n))))
            d = root / f"{sel}_{seed}"
            d.mkdir(parents=True)
            from goracs.evaluate.metrics import auc_logloss

            m = auc_logloss(y, p)
            (d / "metrics.json").write_text(json.dumps({"dataset": "games", "task": "ctr", "selector": sel,
                                                        "budget": 64, "lam": None, "seed": seed,
                                                        "auc": m["auc"], "logloss": m["logloss"]}))
            (d / "predictions.json").write_text(json.dumps({"task": "ctr", "ids": [str(i) for i in range(n)],
                                                            "p_yes": p.tolist(), "labels": y.tolist()}))
    return y


def test_paired_difference_to_random_and_significant_bold(tmp_path):
    from goracs.report.aggregate import paired_vs, significant_best

    _ctr_runs_with_predictions(tmp_path / "a", {"goracs": 1.5, "random": 0.5, "grand": 0.52})
    runs = collect([tmp_path / "a"])
    s = summarise(runs, "ctr")
    assert (s["auc_ci_lo"] < s["auc_mean"]).all() and (s["auc_mean"] < s["auc_ci_hi"]).all()
    d = paired_vs(runs, "ctr", ["auc", "logloss"], n_resamples=400).set_index("selector")
    from goracs.evaluate.metrics import auc_logloss
    from goracs.report.aggregate import sample_metric

    y, q = np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 1.0, 0.0])
    assert sample_metric("logloss")(y, q) == pytest.approx(auc_logloss(y, q)["logloss"], rel=1e-9)
    # the paired difference is the difference of the seed means, and the interval says which differ
    g, r = s.set_index("selector").loc["goracs", "auc_mean"], s.set_index("selector").loc["random", "auc_mean"]
    assert d.loc["goracs", "auc_diff"] == pytest.approx(g - r, abs=1e-12)
    assert d.loc["goracs", "auc_diff_lo"] > 0 and d.loc["goracs", "logloss_diff_hi"] < 0
    assert d.loc["grand", "auc_diff_lo"] < 0 < d.loc["grand", "auc_diff_hi"]   # the same signal as random
    best = significant_best(runs, s, "ctr", ["auc", "logloss"], n_resamples=400)
    assert best[("games", "auc")] == "goracs|64|-"
    md = to_markdown(s, "ctr", paired_vs(runs, "ctr", ["auc"], n_resamples=200), best)
    assert "**" in next(line for line in md.splitlines() if "| goracs |" in line)
    assert "Δ" in md and "(0,1,2)" in md
    # two selectors that do not separate: nothing is bold
    _ctr_runs_with_predictions(tmp_path / "b", {"random": 0.5, "grand": 0.51})
    runs = collect([tmp_path / "b"])
    s = summarise(runs, "ctr")
    best = significant_best(runs, s, "ctr", ["auc"], n_resamples=400)
    assert best[("games", "auc")] is None
    assert "**" not in to_markdown(s, "ctr", paired_vs(runs, "ctr", ["auc"], n_resamples=200), best)


def test_a_job_found_twice_counts_once_at_its_newest_run_everywhere(tmp_path):
    import os

    from goracs.report.aggregate import paired_vs, significant_best

    _ctr_runs_with_predictions(tmp_path / "a", {"goracs": 1.5, "random": 0.5})
    runs0 = collect([tmp_path / "a"])
    d0 = paired_vs(runs0, "ctr", ["auc"], n_resamples=200).set_index("selector").loc["goracs", "auc_diff"]
    # a stale copy of goracs seed 0 with inverted P(Yes), in a folder that sorts last but is older
    src, stale = tmp_path / "a" / "goracs_0", tmp_path / "a" / "zz_stale_goracs_0"
    stale.mkdir()
    m = json.loads((src / "metrics.json").read_text())
    pr = json.loads((src / "predictions.json").read_text())
    (stale / "metrics.json").write_text(json.dumps({**m, "auc": 1 - m["auc"]}))
    (stale / "predictions.json").write_text(json.dumps({**pr, "p_yes": [1 - p for p in pr["p_yes"]]}))
    os.utime(stale / "metrics.json", (1, 1))
    runs = collect([tmp_path / "a"])
    s = summarise(runs, "ctr").set_index("selector")
    assert s.loc["goracs", "seeds"] == 3
    fresh = summarise(runs0, "ctr").set_index("selector")
    assert s.loc["goracs", "auc_mean"] == pytest.approx(fresh.loc["goracs", "auc_mean"])
    d = paired_vs(runs, "ctr", ["auc"], n_resamples=200).set_index("selector").loc["goracs", "auc_diff"]
    assert d == pytest.approx(d0)  # the stale copy is in neither the mean nor the difference
    assert significant_best(runs, s.reset_index(), "ctr", ["auc"], n_resamples=200)[("games", "auc")] == "goracs|64|-"


def test_bold_only_in_the_metrics_direction_and_never_on_a_tie(tmp_path):
    from goracs.report.aggregate import significant_best

    _ctr_runs_with_predictions(tmp_path / "a", {"goracs": 1.5, "random": 0.5})
    runs = collect([tmp_path / "a"])
    s = summarise(runs, "ctr")
    # means that say random is best while the predictions say goracs is far better: not bold
    flipped = s.assign(auc_mean=s["auc_mean"].where(s["selector"] != "random", 0.99))
    assert significant_best(runs, flipped, "ctr", ["auc"], n_resamples=200)[("games", "auc")] is None
    tied = s.assign(auc_mean=0.7)
    assert significant_best(runs, tied, "ctr", ["auc"], n_resamples=200)[("games", "auc")] is None


def test_paired_difference_uses_the_seeds_both_rows_have(tmp_path):
    import shutil

    from goracs.report.aggregate import paired_vs

    _ctr_runs_with_predictions(tmp_path / "a", {"goracs": 1.5, "random": 0.5})
    full = paired_vs(collect([tmp_path / "a"]), "ctr", ["auc"], n_resamples=200).set_index("selector")
    shutil.rmtree(tmp_path / "a" / "goracs_2")  # goracs part-way: seeds 0 and 1
    runs = collect([tmp_path / "a"])
    d = paired_vs(runs, "ctr", ["auc"], n_resamples=200).set_index("selector").loc["goracs"]
    g = runs[(runs["selector"] == "goracs")]["auc"].mean()
    r01 = runs[(runs["selector"] == "random") & runs["seed"].isin([0, 1])]["auc"].mean()
    assert d["paired_seeds"] == "0,1" and full.loc["goracs", "paired_seeds"] == "0,1,2"
    assert d["auc_diff"] == pytest.approx(g - r01, abs=1e-12)  # not against random's mean over seeds 0-2
    md = to_markdown(summarise(runs, "ctr"), "ctr", paired_vs(runs, "ctr", ["auc"], n_resamples=200))
    assert "(seeds" not in md  # the row's own seeds: nothing to name
    # random part-way instead: goracs's three seeds are compared on the two random has, and the cell says so
    shutil.rmtree(tmp_path / "a")
    _ctr_runs_with_predictions(tmp_path / "a", {"goracs": 1.5, "random": 0.5})
    shutil.rmtree(tmp_path / "a" / "random_2")
    runs = collect([tmp_path / "a"])
    md = to_markdown(summarise(runs, "ctr"), "ctr", paired_vs(runs, "ctr", ["auc"], n_resamples=200))
    assert "(seeds 0,1)" in next(line for line in md.splitlines() if "| goracs |" in line)


def test_bold_needs_the_best_to_separate_from_every_row_not_only_the_runner_up(tmp_path):
    """goracs separates from random (the runner-up by the means given) but not from k-center (the same signal),
    which the means put last: a test against the runner-up alone would bold goracs; nothing is bold."""
    from goracs.report.aggregate import significant_best

    _ctr_runs_with_predictions(tmp_path / "a", {"goracs": 1.5, "random": 0.5, "kcenter": 1.5})
    runs = collect([tmp_path / "a"])
    s = summarise(runs, "ctr")
    means = {"goracs": 0.95, "random": 0.90, "kcenter": 0.50}
    ranked = s.assign(auc_mean=s["selector"].map(means))
    assert significant_best(runs, ranked, "ctr", ["auc"], n_resamples=200)[("games", "auc")] is None
    # without k-center's runs, the same means bold goracs
    no_kc = runs[runs["selector"] != "kcenter"]
    assert significant_best(no_kc, ranked[ranked["selector"] != "kcenter"], "ctr", ["auc"],
                            n_resamples=200)[("games", "auc")] == "goracs|64|-"
