"""The W&B logger: an offline run directory holds config, metrics, coreset artifact, POO trajectory and a
table; the `none` logger needs no wandb; a failing job still finishes its run."""

import numpy as np
import pandas as pd
import pytest

from goracs.report.wandb import LoggerError, RunLogger, WandbLogger, make_logger, read_offline_run


def test_offline_run_directory_holds_the_logged_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {"backend": "wandb", "project": "goracs", "mode": "offline", "group": "synthetic-seqrec",
           "job_type": "finetune", "tags": ["test", "tiny"], "dir": str(tmp_path)}
    with make_logger(cfg, run_config={"selection": {"method": "goracs", "budget": 16}}) as lg:
        assert isinstance(lg, WandbLogger)
        lg.log_config({"train": {"lr": 0.03}})
        lg.log_metrics({"val/loss": 1.25}, step=1)
        lg.log_metrics({"val/loss": 0.75, "train/loss": np.float32(0.5)}, step=2)
        lg.log_metrics({"HR@10": 0.3125}, summary=True)
        lg.log_coreset(np.array([4, 1, 7]), metadata={"method": "goracs"})
        lg.log_trajectory([0.9, 0.8, 0.7])
        lg.log_table("results", pd.DataFrame({"method": ["goracs", "random"], "HR@10": [0.3, 0.2],
                                              "ranks": [[1, 2], [3]]}))
        run_dir = lg.run_dir
    assert lg.finished and run_dir.name.startswith("offline-run-") and run_dir.parent.parent == tmp_path
    rec = read_offline_run(run_dir)
    assert rec["complete"]  # the exit record was written
    assert rec["run"]["project"] == "goracs" and rec["run"]["group"] == "synthetic-seqrec"
    assert rec["run"]["job_type"] == "finetune" and rec["run"]["tags"] == ["test", "tiny"]
    assert rec["config"]["selection"] == {"method": "goracs", "budget": 16}
    assert rec["config"]["train"] == {"lr": 0.03}
    losses = [(h["_step"], h["val/loss"]) for h in rec["history"] if "val/loss" in h]
    assert losses == [(1, 1.25), (2, 0.75)]
    assert rec["summary"]["HR@10"] == 0.3125 and rec["summary"]["poo/final"] == 0.7
    assert rec["summary"]["coreset/size"] == 3
    arts = {a["type"]: a for a in rec["artifacts"]}
    assert "indices.npy" in arts["coreset"]["files"]
    tables = {k.rsplit("/", 1)[0] for h in rec["history"] for k, v in h.items()
              if k.endswith("/_type") and v == "table-file"}
    assert {"results", "poo/trajectory"} <= tables
    results = list((run_dir / "files" / "media" / "table").glob("results_*.table.json"))
    import json
    t = json.loads(results[0].read_text())
    assert t["columns"] == ["method", "HR@10", "ranks"] and t["data"][0][:2] == ["goracs", 0.3]


def test_failed_job_finishes_its_run_and_the_next_one_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {"backend": "wandb", "mode": "offline", "dir": str(tmp_path)}
    with pytest.raises(RuntimeError, match="boom"):
        with make_logger(cfg) as lg:
            lg.log_metrics({"x": 1.0}, step=0)
            raise RuntimeError("boom")
    assert lg.finished
    with make_logger(cfg) as lg2:  # a second job in the same process (Hydra multirun) gets its own run
        lg2.log_metrics({"x": 2.0}, step=0)
    assert lg2.run_dir != lg.run_dir
    assert [h["x"] for h in read_offline_run(lg.run_dir)["history"] if "x" in h] == [1.0]
    assert [h["x"] for h in read_offline_run(lg2.run_dir)["history"] if "x" in h] == [2.0]


def test_none_logger_and_bad_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with make_logger({"backend": "none"}) as lg:
        assert type(lg) is RunLogger
        lg.log_metrics({"auc": 0.6}, step=3, summary=True)
        lg.log_coreset([1, 2])
    assert lg.finished and lg.history == [{"auc": 0.6, "_step": 3}] and lg.summary["coreset/size"] == 2
    assert not (tmp_path / "wandb").exists()  # no wandb at all
    with pytest.raises(LoggerError, match="backend"):
        make_logger({"backend": "tensorboard"})
    with pytest.raises(LoggerError, match="mode"):
        make_logger({"backend": "wandb", "mode": "sometimes", "dir": str(tmp_path)})


def test_results_table_with_mixed_lambda_column_is_logged(tmp_path, monkeypatch):
    """The aggregated table's lambda column holds numbers for GORACS and "-" for the baselines; wandb rejects a
    column of mixed types, so such a column is logged as text (the aggregate stage crashed on it)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {"backend": "wandb", "mode": "offline", "dir": str(tmp_path)}
    df = pd.DataFrame({"selector": ["goracs", "random", "dealrec"], "lam": pd.Series([0.1, "-", 0.3], dtype=object),
                       "auc_mean": [0.7, 0.6, 0.65]})
    with make_logger(cfg) as lg:
        lg.log_table("table_ctr", df)
        run_dir = lg.run_dir
    import json
    t = json.loads(next((run_dir / "files" / "media" / "table").glob("table_ctr_*.table.json")).read_text())
    assert [row[1] for row in t["data"]] == ["0.1", "-", "0.3"]
    assert [row[2] for row in t["data"]] == [0.7, 0.6, 0.65]  # single-type columns keep their type


def test_reading_a_run_file_that_is_still_being_written(tmp_path, monkeypatch):
    """wandb-core may still be appending after finish(): a half-written record reads as 'not complete yet', never
    as a parse error; a record that stays corrupt past the wait is named in the error."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    with make_logger({"backend": "wandb", "mode": "offline", "project": "goracs", "dir": str(tmp_path)}) as lg:
        for step in range(5):
            lg.log_metrics({"val/loss": 1.0 / (step + 1)}, step=step)
        run_dir = lg.run_dir
    full = read_offline_run(run_dir)
    assert full["complete"]
    src = next(run_dir.glob("run-*.wandb"))
    data = src.read_bytes()
    part = tmp_path / "partial" / "offline-run-x"
    part.mkdir(parents=True)
    n_steps = []
    for cut in range(16, len(data), max(1, len(data) // 40)):  # cuts inside headers and inside records
        (part / src.name).write_bytes(data[:cut])
        rec = read_offline_run(part, wait_s=0)
        assert not rec["complete"]
        n_steps.append(len([h for h in rec["history"] if "val/loss" in h]))
    assert n_steps == sorted(n_steps) and n_steps[-1] <= 5  # more of the file, more of the history
    # the same bytes with one record's payload garbled at full length: an error that names the file
    bad = bytearray(data)
    bad[7 + 7:7 + 7 + 8] = b"\xff" * 8
    (part / src.name).write_bytes(bytes(bad))
    with pytest.raises(LoggerError, match=src.name):
        read_offline_run(part, wait_s=0)


def test_offline_logger_sets_the_offline_environment_itself(tmp_path, monkeypatch):
    """No WANDB_MODE in the environment: an offline logger still tells wandb (and its service process) to stay
    offline and not to report errors to its servers."""
    import os

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    with make_logger({"backend": "wandb", "mode": "offline", "dir": str(tmp_path)}) as lg:
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_ERROR_REPORTING"] == "false"
        assert lg.run.settings.mode == "offline"
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with make_logger({"backend": "wandb", "mode": "disabled", "dir": str(tmp_path / "d")}) as lg:
        assert os.environ["WANDB_MODE"] == "disabled"
        lg.log_metrics({"x": 1.0})
    assert not (tmp_path / "d" / "wandb").exists()
