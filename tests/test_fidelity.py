"""Fidelity to the authors' runs (issue 13): the two-way CTR objective, the Hugging Face schedules and the CTR
validation cadence, the starting adapter (B != 0) for gradients and fine-tuning, in-context Yes/No ids, and the
authors' label-enhanced cost."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from goracs.errors import DataError
from goracs.models import ModelError, add_lora, check_adapter_fits, load_adapter, tiny_llama
from goracs.prompts import render_prompt
from goracs.signals import grads as G
from goracs.signals.common import ctr_answer_ids, yes_no_ids
from goracs.signals.el2n import el2n_scores
from goracs.train import TrainError, encode_samples, sequence_loss, train_config, train_lora
from tests.test_train import ctr_df, seqrec_df

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ helpers
def sentencepiece_like_tokenizer():
    """A local word-level tokenizer that behaves like LLaMA's SentencePiece on the answer: a word at the start of
    a text gets the "▁" prefix ("▁Yes"), the same word after a newline does not ("Yes"), so the context-free ids of
    the answers differ from their ids after "### Response:\\n". "Yes." is one merged token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "▁Yes", "Yes", "▁No", "No", "\n", "Yes.", "No.", "###", "▁###", "▁Response:",
             "▁Instruction:", "▁Input:", "▁Below"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    tok.padding_side = "left"
    return tok


def hand_two_way(model, tok, df) -> np.ndarray:
    """The two-way CTR loss by hand, one sample at a time: -log softmax(logit_Yes, logit_No)[label]."""
    out = []
    model.eval()
    for ins, inp, lab in zip(df["instruction"], df["input"], df["label"]):
        prompt = render_prompt(ins, inp)
        p = tok(prompt).input_ids
        yes = tok(prompt + "Yes").input_ids[len(p)]
        no = tok(prompt + "No").input_ids[len(p)]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p])).logits[0, -1].double()
        logp = torch.log_softmax(torch.stack([logits[yes], logits[no]]), 0)
        out.append(float(-logp[0 if lab == 1 else 1]))
    return np.asarray(out)


@pytest.fixture(scope="module")
def tiny_cfg():
    from tests.test_train import tiny_train_config

    return tiny_train_config()


# ------------------------------------------------------------------------------------------ 1. the CTR objective
def test_two_way_ctr_loss_equals_hand_computation_and_is_the_validation_loss(tmp_path, tiny_cfg):
    model, tok = tiny_llama(seed=3)
    df = ctr_df(8, seed=1)
    want = hand_two_way(model, tok, df)
    got = sequence_loss(model, tok, df, "ctr")  # the default objective is the two-way loss
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the token loss is another number (it also scores "." and the end of text)
    assert not np.allclose(sequence_loss(model, tok, df, "ctr", ctr_loss="token"), want, atol=1e-3)
    # training encodes the prompt and the first answer token only, labelled with the in-context Yes/No id
    yes_no = ctr_answer_ids(tok, df)
    ids, labels, _ = encode_samples(tok, df, "ctr", 512, "left", True, "two_way", yes_no)
    for i, l, lab in zip(ids, labels, df["label"]):
        assert [x for x in l if x != -100] == [yes_no[0] if lab == 1 else yes_no[1]] and i[-1] == l[-1]
    # the validation loss before the first step is the two-way loss of the starting model on the validation set
    val = ctr_df(6, seed=4)
    start = hand_two_way(tiny_llama(seed=3)[0], tok, val).mean()
    _, rep = train_lora(model, tok, df, val, "ctr", {**train_config(tiny_cfg, "ctr"), "max_steps": 2}, tmp_path)
    assert rep["history"][0]["val_loss"] == pytest.approx(start, rel=1e-5)
    assert rep["ctr_loss"] == "two_way"
    with pytest.raises(TrainError, match="ctr_loss"):
        train_config({"ctr_loss": "focal"}, "ctr")


def test_two_way_loss_refuses_answers_merged_with_punctuation(tmp_path):
    tok = sentencepiece_like_tokenizer()
    df = ctr_df(4)  # outputs "Yes." / "No.": one merged token each for this tokenizer
    with pytest.raises(DataError, match=r"not with the Yes/No ids .*merges the answer word"):
        encode_samples(tok, df, "ctr", 512, "left", True, "two_way", ctr_answer_ids(tok, df))
    # the token loss still works on such a tokenizer
    ids, labels, _ = encode_samples(tok, df, "ctr", 512, "left", True, "token")
    assert all(l[-2] in (tok.convert_tokens_to_ids("Yes."), tok.convert_tokens_to_ids("No.")) for l in labels)


# ------------------------------------------------------------------------------------------ 2. schedule, cadence
def test_hf_linear_schedule_and_the_cadence_above_n(tmp_path, tiny_cfg):
    from goracs.report.wandb import RunLogger

    model, tok = tiny_llama(seed=0)
    df = seqrec_df(8)
    cfg = {**train_config(tiny_cfg, "seqrec"), "epochs": 4, "warmup_steps": 3, "scheduler": "linear",
           "eval_every_steps": 1, "patience": None}
    lg = RunLogger()
    _, rep = train_lora(model, tok, df, df, "seqrec", cfg, tmp_path / "a", logger=lg)
    T, W, lr = rep["steps"], 3, cfg["lr"]
    lrs = [h["train/lr"] for h in lg.history if "train/lr" in h]
    # the Trainer's get_linear_schedule_with_warmup: factor s / W in the warm-up, then (T - s) / (T - W)
    want = [lr * (s / W if s < W else (T - s) / (T - W)) for s in range(1, T + 1)]
    np.testing.assert_allclose(lrs, want, rtol=1e-9)
    # CTR cadence rule: every `steps` once the coreset has more than n samples
    df = ctr_df(8)
    base = {**train_config(tiny_cfg, "ctr"), "epochs": 3, "patience": None, "eval_every_steps": 1}
    _, small = train_lora(tiny_llama(seed=0)[0], tok, df, df, "ctr",
                          {**base, "eval_every_steps_above_n": {"n": 8, "steps": 3}}, tmp_path / "b")
    _, big = train_lora(tiny_llama(seed=0)[0], tok, df, df, "ctr",
                        {**base, "eval_every_steps_above_n": {"n": 7, "steps": 3}}, tmp_path / "c")
    assert small["eval_every_steps"] == 1 and [h["step"] for h in small["history"]] == list(range(7))
    assert big["eval_every_steps"] == 3 and [h["step"] for h in big["history"]] == [0, 3, 6]


# ------------------------------------------------------------------------------------------ 3. starting adapter
def _saved_adapter(path, seed=5, hidden=32):
    """A LoRA adapter with B != 0 (as after instruction tuning), saved in PEFT format."""
    model, tok = tiny_llama(seed=0, hidden=hidden)
    peft = add_lora(model, r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft.save_pretrained(str(path))
    return path


def test_gradients_start_from_a_saved_adapter(tmp_path):
    path = _saved_adapter(tmp_path / "alpaca")
    model, tok = tiny_llama(seed=0)
    df = ctr_df(6)
    fresh = G.grad_norms(tiny_llama(seed=0)[0], tok, df, "ctr", lora={"r": 4, "alpha": 8, "dropout": 0.0},
                         progress=False)
    adapted = load_adapter(model, path, trainable=False)
    got = G.grad_norms(adapted, tok, df, "ctr", progress=False)
    assert not np.allclose(got, fresh, rtol=1e-3)
    # a direct autograd computation at the adapter's point: the 2-way CE at the answer position, differentiated
    # with respect to the last layer's v_proj lora_B
    lora_b, _ = G.lora_b_module(adapted, -1)
    assert float(lora_b.weight.norm()) > 0
    lora_b.weight.requires_grad_(True)  # loaded frozen for scoring
    yes, no = ctr_answer_ids(tok, df)
    for k in range(len(df)):
        ids = torch.tensor([tok(render_prompt(df.instruction[k], df.input[k])).input_ids])
        logits = adapted(input_ids=ids).logits[0, -1]
        loss = torch.nn.functional.cross_entropy(logits[[yes, no]][None], torch.tensor([0 if df.label[k] else 1]))
        (gw,) = torch.autograd.grad(loss, lora_b.weight)
        assert got[k] == pytest.approx(float(gw.norm()), rel=1e-4)


def test_finetuning_and_el2n_start_from_a_saved_adapter(tmp_path, tiny_cfg):
    path = _saved_adapter(tmp_path / "alpaca")
    model, tok = tiny_llama(seed=0)
    df, val = ctr_df(8), ctr_df(6, seed=4)
    at_adapter = load_adapter(tiny_llama(seed=0)[0], path, trainable=False)
    start = sequence_loss(at_adapter, tok, val, "ctr").mean()
    assert start != pytest.approx(sequence_loss(tiny_llama(seed=0)[0], tok, val, "ctr").mean(), rel=1e-3)
    cfg = {**train_config(tiny_cfg, "ctr"), "max_steps": 2, "resume": True}
    trained, rep = train_lora(model, tok, df, val, "ctr", cfg, tmp_path / "run", init_adapter=path)
    assert rep["history"][0]["val_loss"] == pytest.approx(start, rel=1e-5)  # step 0 = the adapter's point
    assert rep["init_adapter"] == str(path)
    # the saved adapter holds the adapter's LoRA settings (r 4), not cfg.lora's (r 4 for tiny too: check alpha)
    saved = json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8
    # resume reloads the finished run; another starting adapter is another run
    _, again = train_lora(tiny_llama(seed=0)[0], tok, df, val, "ctr", cfg, tmp_path / "run", init_adapter=path)
    assert again["resumed"] is True
    other = _saved_adapter(tmp_path / "other", seed=6)
    _, third = train_lora(tiny_llama(seed=0)[0], tok, df, val, "ctr", cfg, tmp_path / "run", init_adapter=other)
    assert third["resumed"] is False
    # EL2N at the adapter's point: sqrt(2) |P(Yes) - y| from the adapted model's Yes/No logits
    scores = el2n_scores(at_adapter, tok, df, "ctr", progress=False)
    want = np.sqrt(2) * np.abs(np.exp(-hand_two_way(at_adapter, tok, df)) - 1)  # |p_correct - 1| = |P(Yes) - y|
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)


def test_bad_initial_adapters_fail_clearly(tmp_path):
    model, _ = tiny_llama(seed=0)
    with pytest.raises(ModelError, match="does not exist: .*nowhere"):
        check_adapter_fits(model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json"):
        check_adapter_fits(model, tmp_path / "empty")
    wide = _saved_adapter(tmp_path / "wide", hidden=64)  # made for another model size
    with pytest.raises(ModelError, match=r"wide: .*q_proj.*has shape .*another model"):
        load_adapter(model, wide)
    cfg = json.loads((wide / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "query_key_value"]
    (wide / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"target module\(s\) \['query_key_value'\] do not exist"):
        check_adapter_fits(model, wide)


# ------------------------------------------------------------------------------------------ 4. Yes/No ids in context
def test_yes_no_ids_are_taken_in_context():
    tok = sentencepiece_like_tokenizer()
    prompt = render_prompt("Say.", "x")
    free = [tok.encode(w, add_special_tokens=False) for w in ("Yes", "No")]
    yes, no = yes_no_ids(tok, prompt)
    assert free == [[tok.convert_tokens_to_ids("▁Yes")], [tok.convert_tokens_to_ids("▁No")]]
    assert (yes, no) == (tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No"))
    assert [yes] != free[0] and [no] != free[1]
    # the signals use the in-context ids: EL2N on a model with this vocabulary equals the hand computation there
    model, _ = tiny_llama(seed=1, vocab_from=tok)
    df = ctr_df(5).assign(output=lambda d: np.where(d.label == 1, "Yes", "No"))
    scores = el2n_scores(model, tok, df, "ctr", packed=False, progress=False)
    want = []
    for ins, inp, lab in zip(df.instruction, df.input, df.label):
        logits = model(input_ids=torch.tensor([tok(render_prompt(ins, inp)).input_ids])).logits[0, -1].detach()
        p_yes = torch.softmax(logits[[yes, no]], 0)[0].item()
        want.append(np.sqrt(2) * abs(p_yes - lab))
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    # and the evaluation scores the same ids (goracs.text.answer_token_ids, which yes_no_ids wraps)
    from goracs.text import answer_token_ids

    assert answer_token_ids(tok, prompt) == ([yes], [no])


# ------------------------------------------------------------------------------------------ 7. label-enhanced cost
def _authors_block_cost(X, Y, g, gmax, lam):
    D = np.sqrt(((X[:, None, :].astype(np.float64) - Y[None, :, :]) ** 2).sum(-1))  # raw distances
    C = D - lam * (g / gmax)[:, None]
    return (C - C.min()) / (C.max() - C.min())


def test_label_enhanced_cost_is_the_authors_normalisation():
    from goracs.selection.cost import compute_cost
    from goracs.selection.goracs import GoracsSelector
    from goracs.selection.refine import itra
    from goracs.selection.base import Signals
    from goracs.selection.label import class_budgets

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)) * 3.0  # raw distances far from 1, so the two normalisations differ
    Y = rng.normal(size=(40, 8)) * 3.0
    g = rng.gamma(2.0, size=120) + 0.1
    yt = (rng.random(120) < 0.7).astype(np.int64)
    yv = (rng.random(40) < 0.7).astype(np.int64)
    lam = 0.5
    for c in (0, 1):
        t, v = yt == c, yv == c
        got = compute_cost(X[t], Y[v], g[t], lam, device="cpu", scale_distances=False, grad_max=float(g.max()))
        np.testing.assert_allclose(got, _authors_block_cost(X[t], Y[v], g[t], g.max(), lam), atol=2e-6)
        ours = compute_cost(X[t], Y[v], g[t], lam, device="cpu")
        assert np.abs(ours - got).max() > 0.01
    sig = Signals(embeddings=X, val_embeddings=Y, grad_norms=g, labels=yt, val_labels=yv)
    sel = GoracsSelector(lam=lam, max_iters=5, cut_num=4, progress=False).select(sig, 16)
    assert sel.report["label_cost"] == "authors"
    b = class_budgets(yv, 16)
    want = []
    for c in (0, 1):
        t = np.flatnonzero(yt == c)
        C = _authors_block_cost(X[t], Y[yv == c], g[t], g.max(), lam).astype(np.float32)
        rows, _ = itra(C, b[c], max_iters=5, cut_num=4, progress=False)
        want.append(t[rows])
    assert sorted(sel.indices.tolist()) == sorted(np.concatenate(want).tolist())
    block = GoracsSelector(lam=lam, max_iters=5, cut_num=4, progress=False, label_cost="block").select(sig, 16)
    assert block.report["label_cost"] == "block"
    from goracs.selection.base import SelectionError

    with pytest.raises(SelectionError, match="label_cost"):
        GoracsSelector(label_cost="raw")
