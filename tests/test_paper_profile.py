"""A CPU dry run of the `paper` profile (issue 17): the profile runs end to end with only what cannot run here
swapped (LLaMA-7B -> the tiny model, GPU -> CPU, the user's raw Amazon files -> the RecBole Games fixture cut to a
few hundred samples, the alpaca adapters -> a fresh LoRA, RoBERTa -> MiniLM, fewer optimizer steps), so every other
key, path and setting of the profile is composed, checked and used as is; 8-bit loading on a CPU stops with a config
error; and every job of every *_paper experiment composes and passes the settings check."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from goracs.__main__ import CONFIG_DIR, run
from goracs.train import train_config
from goracs.validate import ConfigError, check_config

from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
GAMES = SHARED / "amazon-games-2018"


def _cpu(tmp_path: Path, task: str, *extra: str) -> list[str]:
    """The paper profile with only what this CPU machine cannot run replaced."""
    return ["profile=paper", "stage=all", f"task={task}",
            "model=tiny",                       # no LLaMA-7B here (model.path and dtype go with it)
            "device=cpu", "threads=1",          # no GPU
            "dataset=games_recbole",            # the user's raw Amazon files -> the RecBole fixture of Games 2018
            f"paths.root_dir={tmp_path}", f"paths.shared_data_dir={SHARED}",
            "adapters.dir=null",                # no alpaca-tallrec / alpaca-bigrec adapters: a fresh LoRA
            "signals.encoder=minilm",           # RoBERTa-base is not installed here (nothing is downloaded)
            "logger=none", "progress=false", *extra]


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def _needs_games():
    if not GAMES.is_dir():
        pytest.skip(f"the Games fixture {GAMES} is absent")


def _train_report(tmp_path: Path) -> dict:
    reports = list((tmp_path / "cache" / "train").glob("*/train_report.json"))
    assert len(reports) == 1, reports
    return json.loads(reports[0].read_text())


@pytest.mark.slow
def test_paper_profile_runs_ctr_end_to_end_on_cpu(tmp_path):
    _needs_games()
    # a 160-sample pool (the budget stays the profile's 64), 32 validation and 48 test samples; the TALLRec recipe's
    # 20 epochs cut to 2 optimizer steps (at n = 64 and batch 128 one epoch is one step)
    caps = ["task.pool.max_train=160", "task.pool.max_valid=32", "task.pool.max_test=48"]
    # first the data alone, as a user would prepare them before any model or adapter is at hand
    data = run(_compose("profile=paper", "stage=prepare", "task=ctr", "dataset=games_recbole", *caps,
                        f"paths.root_dir={tmp_path}", f"paths.shared_data_dir={SHARED}", "logger=none"),
               tmp_path / "prepare")
    assert len(data.train) >= 160 and len(data.test) >= 48
    cfg = _compose(*_cpu(tmp_path, "ctr", *caps, "train.max_steps=2"))
    res = run(cfg, tmp_path / "run")
    assert len(list((tmp_path / "cache" / "prepare").glob("*/_DONE"))) == 1  # the job reused the prepared data
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= saved["auc"] <= 1.0 and saved["logloss"] > 0 and saved["auc"] == res["auc"]
    assert (saved["dataset"], saved["task"], saved["selector"]) == ("games_recbole", "ctr", "goracs")
    assert saved["budget"] == 64 and saved["lam"] == 0.5 and saved["n_train_pool"] == 160 and saved["n_test"] == 48

    # the run's recorded config keeps every paper setting that was not overridden
    c = saved["config"]
    assert c["prompt"]["name"] == "paper" and c["eval"]["max_new_tokens"] == 128
    assert c["task"]["itra"] == {"max_iters": 20, "cut_num": 3}
    assert c["signals"]["normalize_embeddings"] is False
    ctr = c["train"]["task_overrides"]["ctr"]
    assert (ctr["lr"], ctr["epochs"], ctr["ctr_loss"], ctr["warmup_steps"], ctr["scheduler"]) == \
        (1.0e-5, 20, "two_way", 20, "linear")
    assert (c["train"]["batch_size"], c["train"]["micro_batch_size"], c["train"]["cutoff_len"]) == (128, 16, 512)
    assert c["train"]["mixed_precision"] == "bf16" and c["train"]["val_max_samples"] is None
    assert c["adapters"] == {"dir": None, "seqrec": "alpaca-bigrec", "ctr": "alpaca-tallrec"}
    assert c["model"]["init_adapter"] is None  # the profile's interpolation, resolved with adapters.dir=null

    # and fine-tuning ran with the TALLRec recipe as the trainer saw it (the CTR task override applied)
    rep = _train_report(tmp_path)
    t = rep["config"]
    assert (t["lr"], t["warmup_steps"], t["scheduler"], t["truncation"], t["ctr_loss"]) == \
        (1.0e-5, 20, "linear", "left", "two_way")
    assert (rep["effective_batch"], rep["micro_batch_size"], rep["grad_accum"]) == (128, 16, 8)
    assert t["mixed_precision"] == "bf16" and rep["steps"] == 2 and rep["n_train"] == 64 and rep["n_val"] == 32


@pytest.mark.slow
def test_paper_profile_runs_seqrec_end_to_end_on_cpu(tmp_path):
    _needs_games()
    # SeqRec's budget (1,024) exceeds a 32-sample pool: the whole pool is fine-tuned on, in one optimizer step;
    # generation cut to 8 new tokens (the profile's 128 would dominate the test's time)
    cfg = _compose(*_cpu(tmp_path, "seqrec", "task.pool.max_train=32", "task.pool.max_valid=16",
                         "task.pool.max_test=24", "train.max_steps=1", "eval.max_new_tokens=8"))
    run(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for k in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
        assert 0.0 <= saved[k] <= 1.0
    assert saved["budget"] == 32 and saved["budget_requested"] == 1024 and saved["lam"] == 0.1
    c = saved["config"]
    assert c["task"]["itra"] == {"max_iters": 100, "cut_num": 30} and c["prompt"]["name"] == "paper"
    t = _train_report(tmp_path)["config"]
    assert (t["lr"], t["warmup_steps"], t["scheduler"], t["truncation"], t["eval_every_steps"]) == \
        (1.0e-4, 20, "linear", "right", 100)


def test_paper_profile_composes_for_both_tasks_with_the_cpu_swaps(tmp_path):
    """The fast check of the same swaps: the settings check passes and nothing else of the profile changed."""
    for task, lr in (("ctr", 1.0e-5), ("seqrec", 1.0e-4)):
        cfg = _compose(*_cpu(tmp_path, task))
        if GAMES.is_dir():
            check_config(cfg)
        assert cfg.model.name == "tiny" and cfg.prompt.name == "paper" and cfg.train.warmup_steps == 20
        assert train_config(OmegaConf.to_container(cfg.train, resolve=True), task)["lr"] == lr


@pytest.mark.parametrize("stage", ["prepare", "stats", "aggregate"])
def test_stages_without_a_model_need_no_model_or_adapter_folder(stage, tmp_path):
    # prepare, stats and aggregate load no LLM: the profile's unset model.path and adapters.dir (???) must not break
    # them (the run record resolves the whole config: model.init_adapter interpolated adapters.dir and failed)
    cfg = _compose("profile=paper", f"stage={stage}", f"paths.root_dir={tmp_path}")
    assert OmegaConf.is_missing(cfg.adapters, "dir") and OmegaConf.is_missing(cfg.model, "path")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["init_adapter"] is None
    check_config(cfg)
    assert cfg.aggregate.profile == "paper"  # stage=aggregate profile=paper reads the paper tables
    # a job that trains still stops on the unset adapter folder, with the setting named
    with pytest.raises(ConfigError, match=r"adapters.dir is not set \(\?\?\?\)"):
        check_config(_compose("profile=paper", "stage=all", "model.path=/models/llama-7b",
                              f"paths.root_dir={tmp_path}"))


def test_eight_bit_on_cpu_stops_with_a_config_error(tmp_path):
    llm = tmp_path / "llama-7b"
    llm.mkdir()
    over = ["profile=paper", "stage=all", "task=ctr", f"model.path={llm}", "adapters.dir=null",
            "signals.encoder=minilm", f"paths.root_dir={tmp_path}", "logger=none",
            "model.load_in_8bit=true", "device=cpu"]
    with pytest.raises(ConfigError) as err:
        run(_compose(*over), tmp_path / "run")
    msg = str(err.value)
    assert "model.load_in_8bit=True" in msg and "needs a CUDA GPU" in msg and "device='cpu'" in msg
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # stopped before any stage

    # the same from the command line: the config error's message, no bitsandbytes frame
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-m", "goracs", *over], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert "ConfigError" in out.stderr and "model.load_in_8bit=True: 8-bit loading (bitsandbytes) needs a CUDA GPU" \
        in out.stderr
    assert "bitsandbytes/" not in out.stderr  # no frame from inside the package

    # the check also holds without 8 bits: the same command with load_in_8bit=false passes the settings check
    check_config(_compose(*over[:-2], "model.load_in_8bit=false", "device=cpu"))


def _sweep_jobs(experiment: str) -> list[list[str]]:
    """The override list of every job of the experiment's multirun (seeds: the first only)."""
    params = _compose(f"experiment={experiment}", "model.path=x", "adapters.dir=x", hydra=True).hydra.sweeper.params
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        o = parser.parse_override(f"{key}={value}")
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in (values[:1] if key == "seed" else values)])
    return [list(job) for job in itertools.product(*axes)]


PAPER_EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*_paper.yaml"))


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_every_job_of_the_paper_experiments_composes_and_checks(experiment, tmp_path):
    # the user's folders as stand-ins: the LLM, the adapters, the encoder and the raw Amazon files
    for sub in ("llm", "roberta"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text("{}")
    for name in ("alpaca-bigrec", "alpaca-tallrec"):
        (tmp_path / "loras" / name).mkdir(parents=True)
        (tmp_path / "loras" / name / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    user = [f"model.path={tmp_path / 'llm'}", f"adapters.dir={tmp_path / 'loras'}",
            f"signals.encoder={tmp_path / 'roberta'}", f"paths.root_dir={tmp_path}"]
    jobs = _sweep_jobs(experiment)
    assert len(jobs) > 1
    seen = set()
    for job in jobs:
        cfg = _compose(f"experiment={experiment}", *job, *user)
        root = Path(cfg.dataset.root)
        for key in ("reviews_file", "meta_file"):
            if key in cfg.dataset:
                root.mkdir(parents=True, exist_ok=True)
                (root / cfg.dataset[key]).touch()
        # the paper profile is in force: LLaMA-7B, the paper recipes and prompts, the task's adapter
        assert cfg.model.name == "llama7b" and cfg.prompt.name == "paper" and cfg.device == "auto"
        assert cfg.model.init_adapter == str(tmp_path / "loras" / cfg.adapters[cfg.task.name])
        assert cfg.stage == "all"
        check_config(cfg)
        seen.add((cfg.dataset.name, cfg.task.name, cfg.selector.name, cfg.selector.budget, cfg.selector.get("lam")))
    assert len(seen) == len(jobs)  # every job's overrides took effect
