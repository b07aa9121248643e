"""EL2N scores against a direct one-sample-at-a-time computation from the model's own logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goracs.models import tiny_llama
from goracs.prompts import render_prompt
from goracs.signals.common import SignalError
from goracs.signals.el2n import el2n_scores
from goracs.signals.toy import toy_split


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=1)


@torch.no_grad()
def _logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_ctr_el2n_is_the_yes_no_prediction_error(tiny):
    model, tok = tiny
    df = toy_split(7, "ctr", seed=4)
    got = el2n_scores(model, tok, df, "ctr", batch_size=3, progress=False)
    for k in range(len(df)):
        ids = tok(render_prompt(df.instruction[k], df.input[k])).input_ids
        p = torch.softmax(_logits(model, ids)[-1, [10539, 5230]], 0)  # "Yes", "No" in the SmolLM2 vocabulary
        y = torch.tensor([1.0, 0.0]) if df.label[k] == 1 else torch.tensor([0.0, 1.0])
        assert got[k] == pytest.approx(float(torch.linalg.norm(p - y)), rel=1e-4)
    assert np.all((got >= 0) & (got <= np.sqrt(2) + 1e-6))


def test_seqrec_el2n_is_the_mean_response_token_error(tiny):
    import goracs.signals.el2n as E
    from goracs.signals.common import encode

    model, tok = tiny
    df = toy_split(6, "seqrec", seed=5)
    got = el2n_scores(model, tok, df, "seqrec", batch_size=4, progress=False)
    # the tiny model's softmax is near uniform (every score ~1), so check the scored positions and targets directly
    rows, targets = E._response_rows(encode(tok, df, "seqrec", 512), range(len(df)))
    for k in range(len(df)):
        p_ids = tok(render_prompt(df.instruction[k], df.input[k])).input_ids
        r_ids = tok(df.output[k], add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = p_ids + r_ids
        assert targets[k] == r_ids and rows[k] == list(range(len(p_ids) - 1, len(ids) - 1))
        probs = torch.softmax(_logits(model, ids), -1)
        errs = [torch.linalg.norm(probs[t - 1] - torch.nn.functional.one_hot(torch.tensor(ids[t]), probs.shape[1]))
                for t in range(len(p_ids), len(ids))]
        assert got[k] == pytest.approx(float(torch.stack(errs).mean()), rel=1e-4)
    np.testing.assert_allclose(got, el2n_scores(model, tok, df, "seqrec", batch_size=1, progress=False), rtol=1e-5)


def test_el2n_bad_input(tiny):
    model, tok = tiny
    df = toy_split(3, "seqrec", seed=0)
    with pytest.raises(SignalError, match="keep no response token within max_len=20"):
        el2n_scores(model, tok, df, "seqrec", max_len=20, progress=False)
    bad = toy_split(3, "ctr", seed=0).assign(label=[1, 2, 0])
    with pytest.raises(SignalError, match="sample 1 has label 2"):
        el2n_scores(model, tok, bad, "ctr", progress=False)


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("shared_prefix", [16, 0])
def test_packed_el2n_equals_the_padded_forward(tiny, task, shared_prefix, monkeypatch):
    """Packed and padded EL2N score the same positions with the same targets and the same logits. (The tiny
    model's SeqRec scores are all ~1 - a near-uniform softmax - so the scores alone would hide a wrong target;
    the logits and targets handed to the scoring are compared instead, batch by batch.)"""
    import goracs.signals.el2n as E
    from goracs.signals import packed as P

    model, tok = tiny
    assert P.packable(model)
    df = toy_split(11, task, seed=8)
    seen, prefixes = [], []
    real_scores, real_prefix = E._scores, E._packed_prefix

    def scores(task_, logits, targets, seg, n_rows):
        seen.append((logits.detach().clone(), targets.clone(), None if seg is None else seg.clone()))
        return real_scores(task_, logits, targets, seg, n_rows)

    def prefix(*a, **k):
        prefixes.append(real_prefix(*a, **k)[0])
        return real_prefix(*a, **k)

    monkeypatch.setattr(E, "_scores", scores)
    monkeypatch.setattr(E, "_packed_prefix", prefix)
    padded = el2n_scores(model, tok, df, task, batch_size=4, packed=False, progress=False)
    n_padded = len(seen)
    got = el2n_scores(model, tok, df, task, batch_size=4, shared_prefix=shared_prefix, progress=False)
    np.testing.assert_allclose(got, padded, rtol=1e-5, atol=1e-7)
    assert len(prefixes) == 1
    assert prefixes[0] > 50 if shared_prefix else prefixes[0] == 0  # header + instruction run once
    assert n_padded == len(seen) - n_padded == 3  # 11 samples in batches of 4
    for (lp, tp, sp), (lk, tk, sk) in zip(seen[:n_padded], seen[n_padded:]):
        assert torch.equal(tp, tk) and (sp is None and sk is None or torch.equal(sp, sk))
        torch.testing.assert_close(lk.float(), lp.float(), rtol=1e-4, atol=1e-5)
    # a batch of one: the common prefix of a single sample stops before its first scored position
    one = el2n_scores(model, tok, df.iloc[[3]], task, batch_size=1, progress=False)
    np.testing.assert_allclose(one, padded[[3]], rtol=1e-5, atol=1e-7)


def test_packed_el2n_after_a_warm_up_sees_the_lora_adapters():
    """After the warm-up the model is a peft model with non-zero LoRA B: the packed forward must include it."""
    from goracs.signals.grads import ensure_lora

    model, tok = tiny_llama(seed=2)
    model = ensure_lora(model, lora_seed=0)
    df = toy_split(9, "ctr", seed=3)
    before = el2n_scores(model, tok, df, "ctr", batch_size=4, progress=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    padded = el2n_scores(model, tok, df, "ctr", batch_size=4, packed=False, progress=False)
    got = el2n_scores(model, tok, df, "ctr", batch_size=4, progress=False)
    np.testing.assert_allclose(got, padded, rtol=1e-5, atol=1e-7)
    assert np.max(np.abs(got - before)) > 1e-2  # the adapters changed the scores
