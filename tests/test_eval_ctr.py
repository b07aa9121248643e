"""CTR evaluation on the tiny LLaMA: P(Yes) from the Yes/No logits, multi-token answers, end to end after
fine-tuning, and clear failures."""

import numpy as np
import pytest
import torch

from goracs.errors import DataError
from goracs.evaluate.ctr import evaluate_ctr, p_yes
from goracs.models import tiny_llama
from goracs.prompts import render_prompt
from goracs.text import answer_token_ids
from test_train import ctr_df

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=3)


def test_p_yes_is_softmax_of_yes_no_logits_at_last_prompt_position(tiny):
    model, tok = tiny
    df = ctr_df(5)
    prompts = [render_prompt(i, x) for i, x in zip(df["instruction"], df["input"])]
    p, method = p_yes(model, tok, prompts, {"batch_size": 2, "progress": False})
    assert method == "logits"
    y, n = answer_token_ids(tok, prompts[0])
    assert tok.decode(y) == "Yes" and tok.decode(n) == "No"
    for k, pr in enumerate(prompts):  # one unpadded prompt at a time: the reference
        ids = tok(pr, return_tensors="pt").input_ids
        with torch.no_grad():
            last = model(ids).logits[0, -1]
        ref = torch.softmax(last[[y[0], n[0]]], 0)[0].item()
        assert p[k] == pytest.approx(ref, abs=1e-5)  # left padding in a batch changes nothing


def test_sequence_scoring_agrees_for_single_tokens_and_handles_multi_token_answers(tiny):
    model, tok = tiny
    df = ctr_df(3)
    prompts = [render_prompt(i, x) for i, x in zip(df["instruction"], df["input"])]
    a, _ = p_yes(model, tok, prompts, {"progress": False})
    b, m = p_yes(model, tok, prompts, {"progress": False, "multi_token": "force_sequence"})
    assert m == "sequence"
    np.testing.assert_allclose(a, b, atol=1e-5)
    # answers that the vocabulary splits into several tokens
    yes, no = "Absolutely yes", "Certainly not"
    y, n = answer_token_ids(tok, prompts[0], (yes, no))
    assert len(y) > 1 and len(n) > 1
    c, m = p_yes(model, tok, prompts, {"progress": False, "yes": yes, "no": no})
    assert m == "sequence"
    ids = tok(prompts[0]).input_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids + y])).logits[0], -1)
        ly = sum(lp[len(ids) - 1 + j, t].item() for j, t in enumerate(y))
        lp = torch.log_softmax(model(torch.tensor([ids + n])).logits[0], -1)
        ln = sum(lp[len(ids) - 1 + j, t].item() for j, t in enumerate(n))
    assert c[0] == pytest.approx(1 / (1 + np.exp(ln - ly)), abs=1e-5)
    with pytest.raises(DataError, match="several tokens"):
        p_yes(model, tok, prompts, {"progress": False, "yes": yes, "no": no, "multi_token": "error"})


def test_evaluate_ctr_end_to_end_after_finetuning(tmp_path):
    from sklearn.metrics import log_loss, roc_auc_score

    from goracs.train import train_lora

    model, tok = tiny_llama(seed=4)
    df = ctr_df(8)
    from tests.test_train import tiny_train_config

    cfg = tiny_train_config()
    before = evaluate_ctr(model, tok, df, {"progress": False})
    model, _ = train_lora(model, tok, df, df, "ctr", cfg, tmp_path)
    r = evaluate_ctr(model, tok, df, {"batch_size": 3, "progress": False})
    y, p = np.array(r["labels"]), np.array(r["p_yes"])
    assert r["n"] == 8 and list(y) == df["label"].tolist()
    assert r["auc"] == pytest.approx(roc_auc_score(y, p))
    assert r["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))
    assert r["logloss"] < before["logloss"]  # trained on these very samples


def test_evaluate_ctr_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(DataError, match="missing column"):
        evaluate_ctr(model, tok, ctr_df(2).drop(columns=["label"]), {})
    with pytest.raises(DataError, match="no samples"):
        evaluate_ctr(model, tok, ctr_df(2).iloc[:0], {})
    with pytest.raises(DataError, match="disagrees with label"):
        evaluate_ctr(model, tok, ctr_df(2).assign(label=[1, 1]), {})


def test_eval_yaml_mirrors_the_eval_config_dataclass():
    """The evaluation defaults are declared once, in EvalConfig; configs/eval/default.yaml lists exactly its keys
    (besides the report's metric choices) with the same values except the thread limit, and eval=full changes
    only the protocol."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from goracs.config import defaults_of
    from goracs.evaluate.config import EvalConfig, eval_config
    from goracs.train import load_config_file

    root = Path(__file__).resolve().parents[1] / "configs" / "eval"
    report_keys = {"metrics", "main_metric"}  # read by goracs.evaluate.metrics for the tables, not the evaluators
    d = defaults_of(EvalConfig)
    y = OmegaConf.to_container(OmegaConf.load(root / "default.yaml"))
    assert set(y) - report_keys == set(d)
    assert {k for k in d if y[k] != d[k]} == {"num_threads"}
    full = OmegaConf.to_container(load_config_file(root / "full.yaml"))
    assert {k for k in full if full[k] != y[k]} == {"protocol"}
    assert eval_config(None) == d and eval_config({"batch_size": 3})["batch_size"] == 3


def test_packed_scoring_equals_the_padded_forward(tiny, monkeypatch):
    """The packed CTR scores (shared prefix once, no padding, the head's Yes/No rows at the last position) are the
    padded Hugging Face forward's, with and without the shared prefix, at any batch size."""
    from goracs.signals import packed as P

    model, tok = tiny
    df = ctr_df(7, seed=2)
    prompts = [render_prompt(i, x) for i, x in zip(df["instruction"], df["input"])]
    assert len({len(tok(p).input_ids) for p in prompts}) > 1  # different lengths: batches need padding
    packed, _ = p_yes(model, tok, prompts, {"batch_size": 3, "progress": False})
    with monkeypatch.context() as m:
        m.setattr(P, "packable", lambda _model: False)
        padded, _ = p_yes(model, tok, prompts, {"batch_size": 3, "progress": False})
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    ids = [tok(p).input_ids for p in prompts]
    y, n = answer_token_ids(tok, prompts[0])
    with_prefix = P.answer_logits(model, ids, (y[0], n[0]), batch_size=2, shared_prefix=1)
    without = P.answer_logits(model, ids, (y[0], n[0]), batch_size=5, shared_prefix=0)
    from goracs.signals.common import common_prefix_len

    assert common_prefix_len(ids) >= 1  # the prompts share a prefix that the first call runs once
    np.testing.assert_allclose(with_prefix.numpy(), without.numpy(), atol=1e-4)
    np.testing.assert_allclose(torch.softmax(with_prefix, 1)[:, 0].numpy(), packed, atol=1e-5)


def test_packed_validation_loss_equals_the_padded_one_during_training(tmp_path, monkeypatch):
    """The two-way CTR validation loss from the packed forward is the padded batch's at every evaluation (the
    LoRA weights change between them; dropout is off while validating)."""
    from goracs.signals import packed as P
    from goracs.train import train_lora, train_config
    from tests.test_train import tiny_train_config

    df, val = ctr_df(8, seed=1), ctr_df(6, seed=4)
    cfg = {**train_config(tiny_train_config(), "ctr"), "max_steps": 4, "eval_every_steps": 2, "patience": None}
    hist = {}
    for name, packable in (("packed", P.packable), ("padded", lambda _model: False)):
        with monkeypatch.context() as m:
            m.setattr(P, "packable", packable)
            _, rep = train_lora(tiny_llama(seed=3)[0], tiny_llama(seed=3)[1], df, val, "ctr", cfg, tmp_path / name)
        hist[name] = [h["val_loss"] for h in rep["history"]]
    assert len(hist["packed"]) == 3 and hist["packed"][0] != hist["packed"][-1]
    np.testing.assert_allclose(hist["packed"], hist["padded"], rtol=1e-5)


def test_evaluation_log_loss_is_the_two_way_test_loss(tiny):
    """The proxy check takes a CTR model's test loss from the evaluation's P(Yes) (no second pass): per sample,
    -log P(label) equals the two-way training loss of that sample."""
    from goracs.train import sequence_loss

    model, tok = tiny
    df = ctr_df(6, seed=5)
    m = evaluate_ctr(model, tok, df, {"batch_size": 4, "progress": False})
    py, y = np.asarray(m["p_yes"]), np.asarray(m["labels"])
    nll = -np.where(y == 1, np.log(py), np.log1p(-py))
    np.testing.assert_allclose(nll, sequence_loss(model, tok, df, "ctr", ctr_loss="two_way"), rtol=1e-4, atol=1e-6)
