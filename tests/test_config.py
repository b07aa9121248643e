"""The Hydra config tree composes for every dataset and task, and a run records its provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from goracs.__main__ import CONFIG_DIR, run

DATASETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_every_dataset_and_task_composes(dataset, task):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={dataset}", f"task={task}"])
    assert cfg.dataset.name == dataset and cfg.task.name == task
    assert cfg.dataset.format in ("raw2014", "raw2018", "recbole", "synthetic")
    assert "split" in cfg.dataset


def test_unknown_dataset_is_a_clear_error():
    from hydra.errors import MissingConfigException

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(MissingConfigException, match="dataset"):
            compose("config", overrides=["dataset=books"])


GROUPS = ["model", "selector", "train", "eval", "signals", "logger", "prompt", "profile", "experiment"]


@pytest.mark.parametrize("group", GROUPS)
def test_unknown_group_name_is_a_clear_error(group):
    """An unknown name in any group stops the composition with Hydra's message naming the group, the name and
    the options (the groups used to be `optional`: the name was dropped and the run failed much later)."""
    from hydra.errors import MissingConfigException

    options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(MissingConfigException, match=f"Could not find '{group}/nosuch'") as err:
            compose("config", overrides=["stage=all", f"{group}=nosuch"])
    assert f"Available options in '{group}'" in str(err.value)
    assert all(o in str(err.value) for o in options)


def test_unknown_selector_on_the_command_line_fails_before_any_stage(tmp_path):
    """`python -m goracs selector=gorcs`: the error names the group and its options, and nothing is computed."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "goracs", "stage=all", "selector=gorcs",
                           f"paths.root_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Could not find 'selector/gorcs'" in proc.stderr and "kcenter" in proc.stderr
    assert "not in struct" not in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()


def test_stats_run_records_provenance(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["stage=stats", f"paths.root_dir={tmp_path}", "progress=false",
                                           "dataset.synthetic.n_users=200", "dataset.synthetic.n_items=160"])
    rows = run(cfg, tmp_path / "out")
    assert [r["task"] for r in rows] == ["seqrec", "ctr"]
    assert rows[0]["train"] + rows[0]["valid"] + rows[0]["test"] > 0
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["seed"] == 0 and info["config"]["stage"] == "stats"
    assert info["packages"]["torch"].startswith("2.13") and "commit" in info["git"]
    assert (tmp_path / "out" / "data_stats.md").read_text().startswith("| dataset | task |")
