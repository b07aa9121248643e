"""The shipped submitit launcher configs (issue 17): hydra/launcher=submitit_slurm takes its resources from the paper
profile's `cluster:` node down to the sbatch script, and hydra/launcher=submitit_local runs a two-job multirun on the
tiny model through submitit whose results aggregate."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_submitit_launcher import config as plugin_config
from omegaconf import OmegaConf

from goracs.__main__ import CONFIG_DIR
from goracs.report.aggregate import collect, summarise

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = Path(CONFIG_DIR) / "hydra" / "launcher"
PAPER = ["profile=paper", "model.path=/models/llama-7b", "adapters.dir=null"]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _launcher(cfg) -> dict:
    """hydra.launcher resolved against the whole config (as Hydra does when it builds the launcher)."""
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize("name,schema", [("submitit_slurm", plugin_config.SlurmQueueConf),
                                         ("submitit_local", plugin_config.LocalQueueConf)])
def test_launcher_files_set_every_key_of_the_plugin_schema(name, schema):
    # the files take the plugin's names, so they cannot extend its configs through `defaults`: they must list every
    # key the plugin's launcher reads (launch() indexes submitit_folder) and nothing the plugin does not know
    own = OmegaConf.to_container(OmegaConf.load(LAUNCHERS / f"{name}.yaml"), resolve=False)
    assert set(own) == {f.name for f in dataclasses.fields(schema)}
    assert own["_target_"] == schema._target_
    # the values, resolved in a composed config, are of the schema's types
    resolved = _launcher(_compose(f"hydra/launcher={name}", "hydra.sweep.dir=/tmp/sweep"))
    OmegaConf.merge(OmegaConf.structured(schema), resolved)


def test_slurm_launcher_reads_the_paper_profiles_cluster_node():
    profile = yaml.safe_load((Path(CONFIG_DIR) / "profile" / "paper.yaml").read_text())["cluster"]
    cfg = _compose("hydra/launcher=submitit_slurm", *PAPER)
    got = _launcher(cfg)
    assert (got["partition"], got["gpus_per_node"], got["timeout_min"], got["array_parallelism"], got["mem_gb"],
            got["cpus_per_task"]) == (profile["partition"], profile["gpus_per_job"], profile["timeout_min"],
                                      profile["array_parallelism"], profile["mem_gb"], profile["cpus_per_task"])
    # a command-line change of the profile's node reaches the launcher
    cfg = _compose("hydra/launcher=submitit_slurm", *PAPER, "cluster.partition=gpu", "cluster.gpus_per_job=2",
                   "cluster.timeout_min=95", "cluster.array_parallelism=3")
    got = _launcher(cfg)
    assert (got["partition"], got["gpus_per_node"], got["timeout_min"], got["array_parallelism"]) == ("gpu", 2, 95, 3)
    # the README's table command composes with it, and the SLURM resources do not name a job's folder (a sweep
    # re-submitted with another partition or time limit finds its finished jobs)
    for experiment in ("table_paper", "sweep_lambda_paper", "sweep_budget_paper"):
        cfg = _compose(f"experiment={experiment}", "hydra/launcher=submitit_slurm", "cluster.partition=gpu",
                       "cluster.timeout_min=95", "cluster.gpus_per_job=2", "cluster.array_parallelism=3",
                       "cluster.mem_gb=80", "cluster.cpus_per_task=4", "model.path=/models/llama-7b",
                       "adapters.dir=/models/LoRAs", "task=ctr", "seed=1")
        assert _launcher(cfg)["partition"] == "gpu" and _launcher(cfg)["mem_gb"] == 80
        assert "submitit_launcher.SlurmLauncher" in cfg.hydra.launcher._target_
        assert cfg.hydra.job.override_dirname == "seed=1,task=ctr"


def test_configs_without_a_cluster_node_still_compose():
    # the default composition: no `cluster` node, Hydra's basic launcher, every value resolves
    cfg = _compose()
    assert "cluster" not in cfg
    assert "BasicLauncher" in cfg.hydra.launcher._target_
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    # the SLURM launcher without a profile: its fallbacks apply
    got = _launcher(_compose("hydra/launcher=submitit_slurm"))
    assert got["partition"] is None and got["gpus_per_node"] == 1 and got["timeout_min"] > 0


def test_slurm_launcher_writes_the_profiles_resources_into_the_sbatch_script(tmp_path, monkeypatch):
    """The plugin's own SlurmLauncher, built from the composed config, submits a two-job array to a stand-in
    `sbatch` (no SLURM here): the script it is given carries the profile's partition, GPUs, time, CPUs, memory and
    array parallelism."""
    import submitit

    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", f'cp "$1" "{tmp_path}/script.sh"\necho "Submitted batch job 4242"'),
                       ("srun", "exit 1")):  # submitit checks that srun exists; nothing calls it here
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.core.core.Job, "results", lambda self: ["done"])  # nothing runs the jobs here

    cfg = _compose("hydra/launcher=submitit_slurm", *PAPER, "cluster.partition=gpu", "cluster.gpus_per_job=2",
                   "cluster.timeout_min=95", "cluster.array_parallelism=1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    params = _launcher(cfg)
    params.pop("_target_")
    launcher = SlurmLauncher(**params)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    assert launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0) == ["done", "done"]
    script = (tmp_path / "script.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=95",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --array=0-1%1"):
        assert line in script, script
    assert (tmp_path / "sweep" / ".submitit").is_dir()


@pytest.mark.slow
def test_submitit_local_runs_two_tiny_jobs_through_submitit_and_they_aggregate(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "goracs", "-m", "hydra/launcher=submitit_local", "stage=all", "task=ctr",
           "selector=random", "seed=0,1", "threads=1", "model=tiny", "train=tiny", "train.epochs=1", "logger=none",
           "progress=false", "dataset.synthetic.n_users=150", "dataset.synthetic.n_items=120", "task.max_history=3",
           "task.pool.max_train=24", "task.pool.max_valid=12", "task.pool.max_test=8", "task.budget=6",
           "proxy_check=false", f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}",
           "hydra.sweep.subdir=${hydra:job.num}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text() for p in sweep.rglob("*_log.*")) if sweep.is_dir() else ""
    assert out.returncode == 0, out.stderr[-3000:] + logs[-3000:]

    # it went through submitit: one .submitit folder per job, holding the pickled job, its result and its logs,
    # and each Hydra job carries its submitit job id
    job_dirs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())  # %j: the job ids
    assert len(job_dirs) == 2
    for d in job_dirs:
        names = {p.name for p in d.iterdir()}
        assert {f"{d.name}_submitted.pkl", f"{d.name}_0_result.pkl", f"{d.name}_0_log.out",
                f"{d.name}_0_log.err"} <= names, names
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert [r.name for r in runs] == ["0", "1"]
    ids = sorted(str(OmegaConf.load(r / ".hydra" / "hydra.yaml").hydra.job.id) for r in runs)
    assert ids == [d.name for d in job_dirs]
    # the job's log went to submitit's log files (the pipeline's stage lines are there)
    assert any("train/" in (d / f"{d.name}_0_log.err").read_text() + (d / f"{d.name}_0_log.out").read_text()
               for d in job_dirs)

    # both jobs finished and their results aggregate into one table row over the two seeds
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert sorted(m["seed"] for m in metrics) == [0, 1]
    row = summarise(collect([sweep]), "ctr").set_index("selector").loc["random"]
    assert row["seeds"] == 2
    assert row["auc_mean"] == pytest.approx(sum(m["auc"] for m in metrics) / 2)
