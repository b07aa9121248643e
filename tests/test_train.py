"""LoRA fine-tuning on the tiny LLaMA: loss goes down, the adapter is saved non-empty and reloads exactly,
early stopping keeps the best checkpoint, CTR masks the prompt, bad inputs fail clearly."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from goracs.errors import DataError
from goracs.models import tiny_llama
from goracs.prompts import CTR_INSTRUCTION, SEQREC_INSTRUCTION, ctr_input, ctr_response, seqrec_input
from goracs.train import (encode_samples, eval_cadence, load_config_file, select_coreset, sequence_loss, train_config,
                          train_lora)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TITLES = ["Space Raiders", "Kart Racer 3", "Puzzle Quest", "Dungeon Crawl", "Farm Story", "Zombie Night",
          "Golf Pro", "Chess Master"]


def seqrec_df(n=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        hist = [TITLES[j] for j in rng.choice(len(TITLES), 3, replace=False)]
        tgt = TITLES[(i * 3) % len(TITLES)]
        rows.append({"instruction": SEQREC_INSTRUCTION, "input": seqrec_input(hist), "output": f'"{tgt}"',
                     "label": 1, "target": f"i{(i * 3) % len(TITLES)}"})
    return pd.DataFrame(rows)


def ctr_df(n=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lab = int(i % 2)
        rows.append({"instruction": CTR_INSTRUCTION,
                     "input": ctr_input([TITLES[rng.integers(8)]], [TITLES[rng.integers(8)]], TITLES[i % 8]),
                     "output": ctr_response(lab), "label": lab, "target": f"i{i % 8}"})
    return pd.DataFrame(rows)


def tiny_train_config():
    """configs/train/tiny.yaml with the tiny model's LoRA (model.lora: the one LoRA node), as the pipeline runs it."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(load_config_file(ROOT / "configs/train/tiny.yaml"),
                           {"lora": OmegaConf.load(ROOT / "configs/model/tiny.yaml").lora})


@pytest.fixture(scope="module")
def tiny_cfg():
    return tiny_train_config()


def test_config_files_merge_defaults():
    d = train_config(load_config_file(ROOT / "configs/train/default.yaml"), "ctr")
    assert d["lr"] == pytest.approx(1e-3) and d["cutoff_len"] == 256  # ctr override applied
    p = train_config(load_config_file(ROOT / "configs/train/paper_ctr.yaml"), "ctr")
    assert p["lr"] == pytest.approx(1e-5) and p["epochs"] == 20 and p["batch_size"] == 128
    assert p["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    # the authors' CTR recipe: 20 warm-up steps then linear decay, validation every 10 steps up to n = 128, else
    # every 20, patience 5, the two-way loss
    assert (p["warmup_steps"], p["scheduler"], p["patience"], p["ctr_loss"]) == (20, "linear", 5, "two_way")
    assert eval_cadence(p, 64, 1) == 10 and eval_cadence(p, 128, 1) == 10 and eval_cadence(p, 129, 2) == 20
    both = train_config(load_config_file(ROOT / "configs/train/paper.yaml"), "ctr")
    assert {k: both[k] for k in ("lr", "epochs", "warmup_steps", "scheduler", "eval_every_steps", "ctr_loss",
                                 "eval_every_steps_above_n")} == \
        {k: p[k] for k in ("lr", "epochs", "warmup_steps", "scheduler", "eval_every_steps", "ctr_loss",
                           "eval_every_steps_above_n")}
    s = train_config(load_config_file(ROOT / "configs/train/paper_seqrec.yaml"), "seqrec")
    assert s["lr"] == pytest.approx(1e-4) and s["epochs"] == 50 and s["patience"] == 5
    # the authors validate every 100 steps: at n = 1,024 (8 steps an epoch, 50 epochs) 4 times, fewer than the
    # patience of 5, so early stopping never acts
    assert eval_cadence(s, 1024, 8) == 100 and 8 * 50 // 100 == 4 < s["patience"]
    es = train_config(load_config_file(ROOT / "configs/train/paper_seqrec_es.yaml"), "seqrec")
    assert eval_cadence(es, 1024, 8) == 8 and es["lr"] == s["lr"]


def test_train_yaml_mirrors_the_train_config_dataclass():
    """The defaults are declared once, in TrainConfig; configs/train/default.yaml lists exactly its keys (but
    lora, which the pipeline takes from model.lora) with the same values except the CPU-sized profile's own choices, and no train
    profile sets a key that train_lora does not read."""
    from omegaconf import OmegaConf

    from goracs.config import defaults_of
    from goracs.train import TrainConfig

    d = defaults_of(TrainConfig)
    y = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/train/default.yaml"))
    assert set(y) == set(d) - {"lora"}  # the LoRA is one node, model.lora (the CLI: LoraConfig's defaults)
    assert {k for k in y if y[k] != d[k]} == {"eval_every_steps", "val_max_samples", "num_threads",
                                              "task_overrides"}
    for f in sorted((ROOT / "configs/train").glob("*.yaml")):
        c = OmegaConf.to_container(load_config_file(f))
        assert set(c) <= set(d), (f.name, sorted(set(c) - set(d)))
        for task, over in (c.get("task_overrides") or {}).items():
            assert set(over) <= set(d), (f.name, task, sorted(set(over) - set(d)))
    assert train_config({}, "seqrec") == d  # a partial config falls back to the dataclass defaults


def test_ctr_encoding_masks_the_prompt_and_seqrec_does_not():
    _, tok = tiny_llama()
    df = ctr_df(2)
    ids, labels, _ = encode_samples(tok, df, "ctr", cutoff_len=None)
    for i, l, out in zip(ids, labels, df["output"]):
        kept = [t for t in l if t != -100]
        assert tok.decode(kept) == out + tok.eos_token  # only the answer and eos carry loss
        assert l[: len(l) - len(kept)] == [-100] * (len(l) - len(kept))
    ids, labels, _ = encode_samples(tok, seqrec_df(2), "seqrec", cutoff_len=None)
    assert all(i == l for i, l in zip(ids, labels))
    ids, labels, n = encode_samples(tok, seqrec_df(2), "seqrec", cutoff_len=20, truncation="left")
    assert n == 2 and all(len(i) == 20 for i in ids)
    assert tok.decode(ids[0]).endswith(seqrec_df(2)["output"][0] + tok.eos_token)


def test_finetune_lowers_loss_saves_nonempty_adapter_that_reloads(tmp_path, tiny_cfg):
    from peft import PeftModel

    model, tok = tiny_llama(seed=0)
    df = seqrec_df(6)
    before = sequence_loss(model, tok, df, "seqrec")
    peft_model, rep = train_lora(model, tok, df, df, "seqrec", tiny_cfg, tmp_path)
    after = sequence_loss(peft_model, tok, df, "seqrec")
    # the tiny model's logits are near uniform (hidden 32, init std 0.02): it can only fall by ~0.5 nat
    assert (after < before).all() and after.mean() < before.mean() - 0.05, (before.mean(), after.mean())
    assert rep["best_val_loss"] == pytest.approx(after.mean(), rel=1e-4)  # the kept checkpoint is the best one
    assert rep["best_val_loss"] == min(h["val_loss"] for h in rep["history"][1:])
    assert rep["steps"] == 8 * 2 and rep["adapter"]["tensors"] == 2 * 2 * 2  # 2 layers x q,v x A,B
    ad = tmp_path / "adapter"
    assert (ad / "adapter_model.safetensors").stat().st_size > 1000
    assert (tmp_path / "train_report.json").exists()
    fresh, _ = tiny_llama(seed=0)
    reloaded = PeftModel.from_pretrained(fresh, str(ad)).eval()
    x = tok(["hello world", "a b c"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = peft_model(**x).logits
        b = reloaded(**x).logits
    torch.testing.assert_close(a, b)
    # resume: the same config and data load the finished adapter instead of training again
    cfg2 = {**train_config(tiny_cfg, "seqrec"), "resume": True}
    m3, _ = tiny_llama(seed=0)
    m3, rep3 = train_lora(m3, tok, df, df, "seqrec", cfg2, tmp_path)
    assert rep3["resumed"] is True and rep3["best_step"] == rep["best_step"]
    with torch.no_grad():
        torch.testing.assert_close(m3(**x).logits, a)
    # another config is not mistaken for the finished run
    m4, _ = tiny_llama(seed=0)
    m4, rep4 = train_lora(m4, tok, df, df, "seqrec", {**cfg2, "max_steps": 1}, tmp_path)
    assert rep4["resumed"] is False and rep4["steps"] == 1


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_cfg):
    model, tok = tiny_llama(seed=1)
    train = ctr_df(4).assign(output="Yes.", label=1)
    # the token loss falls while "." and eos are learnt, then rises with P(Yes)
    val = ctr_df(4).assign(output="No.", label=0)
    cfg = {**train_config(tiny_cfg, "ctr"), "epochs": 30, "patience": 2, "eval_every_steps": 1, "ctr_loss": "token"}
    peft_model, rep = train_lora(model, tok, train, val, "ctr", cfg, tmp_path)
    assert rep["stopped_early"] and rep["steps"] < 30 and rep["steps"] == rep["best_step"] + 2  # 2 worse evals
    assert rep["best_step"] > 1
    assert [h["step"] for h in rep["history"]] == list(range(rep["steps"] + 1))
    assert all(h["val_loss"] > rep["best_val_loss"] for h in rep["history"][rep["best_step"] + 1:])
    vl = sequence_loss(peft_model, tok, val, "ctr", ctr_loss="token")
    assert vl.mean() == pytest.approx(rep["best_val_loss"], rel=1e-5)  # the best checkpoint was restored


def test_ctr_finetune_lowers_answer_loss(tmp_path, tiny_cfg):
    model, tok = tiny_llama(seed=2)
    df = ctr_df(8)
    before = sequence_loss(model, tok, df, "ctr")
    from goracs.report.wandb import RunLogger

    lg = RunLogger()
    peft_model, rep = train_lora(model, tok, df, df, "ctr", tiny_cfg, tmp_path, logger=lg)
    after = sequence_loss(peft_model, tok, df, "ctr")
    logged = [(h["_step"], h["val/loss"]) for h in lg.history if "val/loss" in h]
    assert logged == [(h["step"], h["val_loss"]) for h in rep["history"]]
    # the two-way Yes/No loss starts near ln 2 and falls (16 steps on the random tiny model move it a little)
    assert abs(before.mean() - np.log(2)) < 0.05 and after.mean() < before.mean() - 0.05, (before.mean(), after.mean())
    assert rep["effective_batch"] == 4 and rep["grad_accum"] == 2 and rep["ctr_loss"] == "two_way"
    token = train_lora(tiny_llama(seed=2)[0], tok, df, df, "ctr", {**train_config(tiny_cfg, "ctr"),
                                                                    "ctr_loss": "token"}, tmp_path / "token")[0]
    t_before = sequence_loss(tiny_llama(seed=2)[0], tok, df, "ctr", ctr_loss="token")
    assert sequence_loss(token, tok, df, "ctr", ctr_loss="token").mean() < t_before.mean() - 0.1


def test_bad_inputs_fail_clearly(tmp_path, tiny_cfg):
    model, tok = tiny_llama(seed=0)
    df = seqrec_df(4)
    with pytest.raises(DataError, match="empty coreset"):
        train_lora(model, tok, df.iloc[:0], df, "seqrec", tiny_cfg, tmp_path)
    with pytest.raises(DataError, match="missing column"):
        train_lora(model, tok, df.drop(columns=["output"]), df, "seqrec", tiny_cfg, tmp_path)
    with pytest.raises(DataError, match="Yes.' or 'No."):
        train_lora(model, tok, df, df, "ctr", tiny_cfg, tmp_path)
    with pytest.raises(DataError, match="another dataset"):
        select_coreset(df, np.array([0, 7]))
    with pytest.raises(DataError, match="empty coreset"):
        select_coreset(df, np.array([], dtype=int))
    with pytest.raises(DataError, match="duplicate"):
        select_coreset(df, np.array([1, 1]))
    assert list(select_coreset(df, np.array([2, 0])).index) == [2, 0]


def test_two_runs_in_one_process_may_use_different_mixed_precision(tmp_path):
    """accelerate keeps a process-wide state; a second run with another mixed precision (a Hydra multirun with the
    basic launcher, a test session) must not be refused."""
    from goracs.models import tiny_llama
    from goracs.train import train_config, train_lora

    df, val = ctr_df(8, seed=1), ctr_df(4, seed=2)
    reports = []
    for mp in ("no", "bf16"):
        model, tok = tiny_llama(seed=3)
        cfg = {**train_config(tiny_train_config(), "ctr"), "max_steps": 1, "mixed_precision": mp}
        reports.append(train_lora(model, tok, df, val, "ctr", cfg, tmp_path / mp)[1])
    assert [r["config"]["mixed_precision"] for r in reports] == ["no", "bf16"]
    assert all(r["steps"] == 1 for r in reports)



def _interrupted_run(tmp_path, tiny_cfg, monkeypatch, cfg, kill_step: int, restore_rng: bool = True):
    """Train with a checkpoint at every step, kill the run at `kill_step`, continue it in the same process with
    another RNG state; (weights, report) of the continued run."""
    from goracs.train import loop

    class Killed(Exception):
        pass

    def kill_at(step):
        if step == kill_step:
            raise Killed

    tok, df, ck = tiny_llama(seed=0)[1], seqrec_df(6), tmp_path / "ckpt"
    with monkeypatch.context() as mp:
        mp.setattr(loop, "_checkpointed", kill_at)
        with pytest.raises(Killed):
            train_lora(tiny_llama(seed=0)[0], tok, df, df, "seqrec", cfg, tmp_path / "a", checkpoint_dir=ck,
                       checkpoint_seconds=0)
    assert (ck / "train_state.pt").exists()
    torch.manual_seed(123)  # the interrupted process's RNG is not the run's: the checkpoint's is restored
    with monkeypatch.context() as mp:
        if not restore_rng:
            mp.setattr(torch, "set_rng_state", lambda state: None)
        m, rep = train_lora(tiny_llama(seed=0)[0], tok, df, df, "seqrec", cfg, tmp_path / "b", checkpoint_dir=ck,
                            checkpoint_seconds=0)
    return loop._lora_state(m), rep


def test_an_interrupted_training_continues_from_its_checkpoint_to_the_same_adapter(tmp_path, tiny_cfg, monkeypatch):
    """A run killed after a checkpoint continues from it (weights, optimizer, schedule, early stopping, dropout RNG,
    the epoch's shuffle) and ends with exactly the adapter and history of an uninterrupted run; without the
    restored RNG (the control) it would not."""
    from goracs.train import loop

    lora = {**train_config(tiny_cfg, "seqrec")["lora"], "dropout": 0.3}  # dropout draws from the restored RNG
    cfg = {**train_config(tiny_cfg, "seqrec"), "lora": lora, "epochs": 4, "eval_every_steps": 3, "patience": 100}
    tok, df = tiny_llama(seed=0)[1], seqrec_df(6)  # 3 micro batches of 2 per epoch: 2 optimizer steps each
    m, ref = train_lora(tiny_llama(seed=0)[0], tok, df, df, "seqrec", cfg, tmp_path / "whole")
    ref_w = loop._lora_state(m)

    # step 5: the first step of the third epoch (mid-epoch), after the evaluation at step 3
    got, rep = _interrupted_run(tmp_path / "1", tiny_cfg, monkeypatch, cfg, kill_step=5)
    assert rep["continued_from_step"] == 5 and rep["steps"] == ref["steps"] == 8
    assert rep["history"] == ref["history"] and rep["best_step"] == ref["best_step"]
    assert got.keys() == ref_w.keys() and all(torch.equal(got[k], ref_w[k]) for k in got)

    # step 3: killed right after an evaluation (and its early-stopping bookkeeping)
    got3, rep3 = _interrupted_run(tmp_path / "3", tiny_cfg, monkeypatch, cfg, kill_step=3)
    assert rep3["continued_from_step"] == 3 and rep3["history"] == ref["history"]
    assert all(torch.equal(got3[k], ref_w[k]) for k in got3)

    bad, _ = _interrupted_run(tmp_path / "2", tiny_cfg, monkeypatch, cfg, kill_step=5, restore_rng=False)
    assert any(not torch.equal(bad[k], ref_w[k]) for k in bad)

    # a checkpoint of another format (an older code's) or of another config is not continued from
    from goracs.train.loop import CHECKPOINT_FORMAT

    state = torch.load(tmp_path / "1" / "ckpt" / "train_state.pt", weights_only=False)
    torch.save({**state, "format": CHECKPOINT_FORMAT - 1}, tmp_path / "old.pt")
    assert loop._load_state(tmp_path / "old.pt", state["key"]) is None
    assert loop._load_state(tmp_path / "1" / "ckpt" / "train_state.pt", state["key"])["step"] == 7  # the last
    _, rep3 = train_lora(tiny_llama(seed=0)[0], tok, df, df, "seqrec", {**cfg, "lr": 1e-2}, tmp_path / "c",
                         checkpoint_dir=tmp_path / "1" / "ckpt", checkpoint_seconds=1e9)
    assert rep3["continued_from_step"] is None and rep3["steps"] == 8
