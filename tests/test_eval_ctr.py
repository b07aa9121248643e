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
