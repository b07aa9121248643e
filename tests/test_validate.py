"""Settings are checked before anything expensive runs (goracs/validate.py, called by goracs.__main__.run): a bad
value stops the run with a ConfigError naming the setting, the value and what is allowed, before the samples,
signals, selection, fine-tuning or evaluation start; settings without effect are warned about."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import goracs.pipeline as P
from goracs.__main__ import CONFIG_DIR, run
from goracs.validate import ConfigError, check_config

TINY = ["model=tiny", "train=tiny", "logger=none", "progress=false", "task.budget=8"]
SELECTORS = sorted(p.stem for p in (Path(CONFIG_DIR) / "selector").glob("*.yaml"))


def config(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


class StageRan(Exception):
    """A stage function was called."""


@pytest.fixture
def no_stage(monkeypatch):
    """Every stage entry point raises StageRan: a run that reaches one got past the checks."""
    for name in ("run_prepare", "compute_embeddings", "compute_grad_norms", "compute_el2n", "run_select",
                 "run_train", "run_evaluate", "base_model"):
        def stop(*a, _name=name, **k):
            raise StageRan(_name)

        monkeypatch.setattr(P, name, stop)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


BAD = [
    # (overrides, what the message must say)
    (["selector.budget=0"], r"selector\.budget=0: must be an integer >= 1"),
    (["selector=random", "selector.budget=-3"], r"selector\.budget=-3"),
    (["selector=random", "selector.budget=2.5"], r"selector\.budget=2\.5: must be an integer"),
    (["task.budget=0"], r"task\.budget=0: must be an integer >= 1"),
    (["eval.protocol=ful"], r"eval\.protocol='ful': must be one of \['sampled', 'full'\]"),
    (["selector.lam=-0.1"], r"selector\.lam=-0\.1: must be a finite number >= 0.*small gradient norms"),
    (["selector.lam=nan"], r"selector\.lam=nan: must be a finite number"),
    (["selector=random", "task.lam=-1"], r"task\.lam=-1"),
    (["eval.ks=[0,5]"], r"eval\.ks=\[0, 5\]: must be a non-empty list of integers >= 1"),
    (["eval.num_beams=0"], r"eval\.num_beams=0: must be an integer >= 1"),
    (["eval.max_new_tokens=0"], r"eval\.max_new_tokens=0: must be an integer >= 1"),
    (["eval.multi_token=first"], r"eval\.multi_token='first'"),
    (["selector.mi_estimate=exact"], r"selector\.mi_estimate='exact': must be one of \['tight', 'reference'\]"),
    (["selector.label_cost=rows"], r"selector\.label_cost='rows': must be one of \['authors', 'block'\]"),
    (["task.itra.max_iters=-1"], r"task\.itra\.max_iters=-1: must be an integer >= 0"),
    (["task.itra.cut_num=0"], r"task\.itra\.cut_num=0: must be an integer >= 1"),
    (["task.pool.max_valid=0"], r"task\.pool\.max_valid=0"),
    (["task=ctr", "train.ctr_loss=hinge"], r"train\.ctr_loss must be one of \('two_way', 'token'\), got 'hinge'"),
    (["train.truncation=middle"], r"train\.truncation must be 'left' or 'right', got 'middle'"),
    (["train.scheduler=cosine"], r"train\.scheduler must be 'constant' or 'linear'"),
    (["train.batch_size=0"], r"train\.batch_size and train\.micro_batch_size must be >= 1"),
    (["train.lr=0"], r"train\.lr=0: must be a finite number > 0"),
    (["train.epochs=-1"], r"train\.epochs=-1: must be an integer >= 0 \(0 = no fine-tuning"),
    (["task=ctr", "train=default", "train.task_overrides.ctr.lr=-1"], r"train\.task_overrides\.ctr\.lr=-1"),
    (["train.mixed_precision=fp8"], r"train\.mixed_precision='fp8'"),
    (["device=gpu"], r"device='gpu': must be one of \['cpu', 'cuda', 'auto'\]"),
    (["model=smollm2_135m", "model.load_in_8bit=true"], r"model\.load_in_8bit=True: 8-bit loading .* needs a CUDA GPU"),
    (["model=llama7b"], r"model\.path is not set \(\?\?\?\): model=llama7b needs the folder of a local checkpoint"),
    (["model=llama7b", "model.path=/no/such/llama"], r"model\.path='/no/such/llama': no such folder"),
    (["model.init_adapter=/no/such/adapter"], r"model\.init_adapter='/no/such/adapter': a PEFT LoRA folder"),
    (["signals.encoder=/no/such/encoder"], r"encoder path does not exist .*signals\.encoder"),
    (["selector=ccs", "selector.beta=2"], r"selector=ccs: beta must be in \[0, 1\)"),
    (["selector=kcenter", "+selector.radius=1"], r"selector=kcenter: .*unexpected keyword argument 'radius'"),
    (["logger=wandb", "logger.mode=loud"], r"logger\.mode='loud'"),
    (["task=seqrec", "selector=random", "selector.stratify=true"], r"selector=random .*needs class labels"),
    (["profile=paper", "dataset=synthetic", "model.path=/tmp", "signals.encoder=minilm"],
     r"adapters\.dir is not set \(\?\?\?\)"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_setting_fails_before_any_stage(tmp_path, no_stage, overrides, message):
    cfg = config("stage=all", f"paths.root_dir={tmp_path}", *TINY, *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "run_info.json").exists()  # nothing is recorded for a run that cannot start


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path, no_stage):
    with pytest.raises(ConfigError, match=r"device='cuda': torch sees no CUDA device"):
        run(config("stage=all", f"paths.root_dir={tmp_path}", *TINY, "device=cuda"), tmp_path / "out")


def test_every_problem_is_reported_at_once(tmp_path, no_stage):
    cfg = config("stage=all", f"paths.root_dir={tmp_path}", *TINY, "selector.budget=0", "eval.protocol=ful",
                 "train.lr=0")
    with pytest.raises(ConfigError, match="3 problems") as err:
        run(cfg, tmp_path / "out")
    assert [p.split("=")[0] for p in err.value.problems] == ["selector.budget", "train.lr", "eval.protocol"]


def test_budget_zero_fails_before_any_signal_is_computed(tmp_path, monkeypatch):
    """The real stages (no stubs): the run stops before the samples are prepared or any signal computed."""
    import goracs.signals.embed
    import goracs.signals.grads

    called = []
    monkeypatch.setattr(goracs.signals.embed, "load_encoder", lambda *a, **k: called.append("embed"))
    monkeypatch.setattr(goracs.signals.grads, "grad_norms", lambda *a, **k: called.append("grads"))
    with pytest.raises(ConfigError, match=r"selector\.budget=0"):
        run(config("stage=all", f"paths.root_dir={tmp_path}", *TINY, "selector.budget=0"), tmp_path / "out")
    assert called == [] and not (tmp_path / "cache").exists()


def test_prepare_does_not_check_what_it_does_not_read(tmp_path, no_stage):
    """stage=prepare reads no selector, model or training setting: a bad one does not stop it."""
    with pytest.raises(StageRan, match="run_prepare"):
        run(config("stage=prepare", f"paths.root_dir={tmp_path}", "selector.budget=0", "model=llama7b"),
            tmp_path / "out")
    with pytest.raises(ConfigError, match=r"task\.max_history=0"):
        run(config("stage=prepare", f"paths.root_dir={tmp_path}", "task.max_history=0"), tmp_path / "out")


def test_seqrec_only_selector_on_ctr_is_still_skipped(tmp_path):
    cfg = config("stage=all", f"paths.root_dir={tmp_path}", *TINY, "task=ctr", "selector=dealrec")
    assert check_config(cfg) == []
    assert run(cfg, tmp_path / "out") == {}


def test_tiny_model_path_is_warned_about(tmp_path, no_stage, caplog):
    cfg = config("stage=all", f"paths.root_dir={tmp_path}", *TINY, f"model.path={tmp_path}")
    with caplog.at_level(logging.WARNING, logger="goracs.validate"):
        with pytest.raises(StageRan):  # a warning, not an error: the run goes on
            run(cfg, tmp_path / "out")
    assert any("model=tiny" in r.message and f"model.path='{tmp_path}' ignored" in r.message
               for r in caplog.records)


def test_protocol_on_ctr_is_warned_about():
    warnings = check_config(config("stage=all", *TINY, "task=ctr", "eval=full"))
    assert warnings == ["eval.protocol='full' has no effect on task=ctr (AUC and log-loss over the test samples); "
                        "it sets the SeqRec ranking only"]


def test_budget_above_the_pool_cap_is_warned_about(tmp_path):
    warnings = check_config(config("stage=all", *TINY, "task.pool.max_train=6"))
    assert any("selector.budget=8 >= task.pool.max_train=6: the whole training pool is used" in w for w in warnings)


# ----------------------------------------------------------------------------------------------------------------
# the demo: every job it will run is checked before the first one starts


def test_demo_checks_every_job_first(tmp_path, no_stage):
    cfg = config("experiment=demo", f"paths.root_dir={tmp_path}", "task.budget=0", "train.lr=0")
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path / "out")
    assert err.value.problems == [
        "task.budget=0: must be an integer >= 1 (training samples to select) (every demo job)",
        # the CTR jobs train with train.task_overrides.ctr.lr
        "train.lr=0: must be a finite number > 0.0 (demo jobs seqrec/goracs, seqrec/random)"]


def test_demo_unknown_selector_fails_before_the_first_job(tmp_path, no_stage):
    cfg = config("experiment=demo", f"paths.root_dir={tmp_path}", "demo.selectors=[goracs,gorcs]")
    with pytest.raises(ConfigError, match=r"demo\.selectors='gorcs': no configs/selector/gorcs\.yaml; options: "
                                          r"\['ccs', .*'random'\]"):
        run(cfg, tmp_path / "out")


def test_demo_warns_that_selector_settings_do_not_reach_its_jobs(tmp_path, no_stage, caplog):
    with caplog.at_level(logging.WARNING, logger="goracs.validate"):
        with pytest.raises(StageRan):
            run(config("experiment=demo", f"paths.root_dir={tmp_path}", "selector.budget=5"), tmp_path / "out")
    assert any("selector.budget=5 ignored" in r.message for r in caplog.records)


# ----------------------------------------------------------------------------------------------------------------
# no false alarms: every shipped configuration passes


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("selector", SELECTORS)
def test_every_selector_passes_with_the_default_profile(task, selector):
    cfg = config("experiment=table_default", f"task={task}", f"selector={selector}")
    if selector.endswith("_stratified") and task == "seqrec":  # per-class selection: CTR's labels only
        with pytest.raises(ConfigError, match=f"selector={selector} .* needs class labels"):
            check_config(cfg)
        return
    assert check_config(cfg) == []


@pytest.mark.parametrize("overrides", [
    ["experiment=demo"], ["experiment=demo", "demo.full=1"], ["stage=all"], ["stage=stats"], ["stage=prepare"],
    ["experiment=sweep_budget_default"], ["experiment=sweep_lambda_default", "selector.lam=0"],
    ["stage=all", "eval=full"], ["stage=all", "train=paper_seqrec_es"], ["stage=all", "train=paper", "task=ctr"],
])
def test_shipped_configs_pass(overrides):
    assert check_config(config(*overrides)) == []


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("experiment", ["table_paper", "sweep_budget_paper", "sweep_lambda_paper"])
def test_paper_experiments_pass_with_their_paths(tmp_path, experiment, task):
    cfg = config(f"experiment={experiment}", f"task={task}", "dataset=games", f"model.path={tmp_path}",
                 "adapters.dir=null", "signals.encoder=minilm")
    assert check_config(cfg) == []
    assert math.isfinite(cfg.selector.lam) and cfg.selector.lam >= 0
