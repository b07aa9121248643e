"""Per-sample LoRA-B gradient norms: batched closed form vs a backward loop, shards, resume, processes, errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from goracs.models import ModelError, add_lora, tiny_llama
from goracs.signals import grad_batch as GB
from goracs.signals import grads as G
from goracs.signals import packed as P
from goracs.signals.common import SignalError, common_prefix_len, encode, length_batches, yes_no_ids
from goracs.text import pad_right
from goracs.signals.toy import toy_split

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    """A LoRA-wrapped tiny LLaMA (seeded) and the SmolLM2 tokenizer."""
    model, tok = tiny_llama(seed=0)
    return G.ensure_lora(model, lora_seed=0), tok


@pytest.fixture(scope="module")
def frames():
    return {"seqrec": toy_split(10, "seqrec", seed=1), "ctr": toy_split(10, "ctr", seed=2)}


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_batched_equals_per_sample_loop(tiny, frames, task, packed):
    model, tok = tiny
    df = frames[task]
    order = np.concatenate(length_batches([len(i) for i in encode(tok, df, task, 512).ids], 4))
    assert not np.array_equal(order, np.arange(len(df)))  # batches are length-sorted; results come back in order
    batched = G.grad_norms(model, tok, df, task, batch_size=4, packed=packed, progress=False)
    loop = G.grad_norms_loop(model, tok, df, task, progress=False)
    assert batched.shape == (len(df),) and batched.dtype == np.float32
    assert np.all(loop > 0), "B = 0 at init but its gradient must not vanish"
    np.testing.assert_allclose(batched, loop, rtol=1e-4, atol=0)
    assert np.std(loop) > 0  # samples differ, so a constant answer could not pass


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_shared_prefix_cache_changes_nothing_but_the_work(tiny, frames, task, monkeypatch):
    model, tok = tiny
    df = frames[task]
    assert common_prefix_len(encode(tok, df, task, 512).ids) > 50  # header + instruction are shared
    used = {"n": 0}
    real = GB.batch_norms_prefix

    def spy(*a, **k):
        used["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(GB, "batch_norms_prefix", spy)
    kw = dict(batch_size=3, packed=False, progress=False)  # the padded Hugging Face path (non-LLaMA models)
    with_prefix = G.grad_norms(model, tok, df, task, **kw)
    assert used["n"] == 4  # 10 samples in batches of 3, all through the cached prefix
    without = G.grad_norms(model, tok, df, task, shared_prefix=0, **kw)
    assert used["n"] == 4
    np.testing.assert_allclose(with_prefix, without, rtol=1e-5)
    # a sample with another instruction shortens the shared prefix to the header; still exact
    other = df.copy()
    other.loc[0, "instruction"] = "Rate it."
    short = common_prefix_len(encode(tok, other, task, 512).ids)
    assert 16 < short < common_prefix_len(encode(tok, df, task, 512).ids)
    np.testing.assert_allclose(G.grad_norms(model, tok, other, task, **kw),
                               G.grad_norms_loop(model, tok, other, task, progress=False), rtol=1e-4)
    assert used["n"] == 8
    G.grad_norms(model, tok, other, task, shared_prefix=short + 1, **kw)
    assert used["n"] == 8  # a prefix shorter than the threshold: the plain path


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_packed_path_with_and_without_prefix(tiny, frames, task, monkeypatch):
    model, tok = tiny
    df = frames[task]
    assert P.packable(model)
    prefixes = []
    real = GB.batch_norms_packed

    def spy(model, lora_b, enc, rows, task, yes_no, st):
        prefixes.append(st["len"])
        return real(model, lora_b, enc, rows, task, yes_no, st)

    monkeypatch.setattr(GB, "batch_norms_packed", spy)
    loop = G.grad_norms_loop(model, tok, df, task, progress=False)
    c = common_prefix_len(encode(tok, df, task, 512).ids)
    for kw, expect in ((dict(), c), (dict(shared_prefix=0), 0), (dict(shared_prefix=c + 1), 0)):
        prefixes.clear()
        out = G.grad_norms(model, tok, df, task, batch_size=3, progress=False, **kw)
        assert prefixes == [expect] * 4  # every batch packed; the shared prefix only when long enough
        np.testing.assert_allclose(out, loop, rtol=1e-4)
    prefixes.clear()
    first = G.grad_norms(model, tok, df, task, layer=0, batch_size=3, progress=False)
    assert prefixes == []  # a lower target layer: the padded path (its gradient also flows through the layers above)
    np.testing.assert_allclose(first, G.grad_norms_loop(model, tok, df, task, layer=0, progress=False), rtol=1e-4)


def test_packed_when_the_prefix_leaves_one_token(tiny, frames):
    """Identical samples: the shared prefix is all but the last token, whose SeqRec suffix predicts nothing."""
    model, tok = tiny
    df = frames["seqrec"].iloc[[2, 2, 2]].reset_index(drop=True)
    enc = encode(tok, df, "seqrec", 512)
    assert common_prefix_len(enc.ids) == len(enc.ids[0]) - 1
    out = G.grad_norms(model, tok, df, "seqrec", batch_size=2, progress=False)
    np.testing.assert_allclose(out, G.grad_norms_loop(model, tok, df, "seqrec", progress=False), rtol=1e-4)
    assert np.ptp(out) == 0


def test_packed_layers_match_the_model_forward(tiny, frames):
    """The packed decoder layers give the model's own hidden states at every real token (prefix + suffix)."""
    model, tok = tiny
    enc = encode(tok, frames["ctr"], "ctr", 512)
    rows = [0, 3, 5]
    c = common_prefix_len(enc.ids)
    decoder = P.base_model(model).model
    ids, mask = pad_right([enc.ids[k] for k in rows], 0, "cpu")
    with torch.no_grad():
        ref = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        pre = decoder(input_ids=ids[:1, :c], attention_mask=mask[:1, :c], use_cache=True)
        kv = P.PrefixKV([layer.keys[0] for layer in pre.past_key_values.layers],
                        [layer.values[0] for layer in pre.past_key_values.layers])
        pk = P.pack(model, [enc.ids[k][c:] for k in rows], c, "cpu")
        h = decoder.embed_tokens(pk.ids)
        for i, layer in enumerate(decoder.layers):
            h = P.layer_forward(layer, h, pk, kv, i)
            want = torch.cat([ref[i + 1][j, c:len(enc.ids[k])] for j, k in enumerate(rows)])
            got = decoder.norm(h) if i == len(decoder.layers) - 1 else h  # the last entry is after the final norm
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(h) == sum(len(enc.ids[k]) - c for k in rows)  # no padding rows


def test_closed_form_token_loss_gradient_matches_autograd():
    torch.manual_seed(0)
    weight, hs = torch.randn(50, 8), torch.randn(7, 8)
    targets, w = torch.randint(0, 50, (7,)), torch.rand(7)
    for block in (1 << 28, 50 * 4 * 3):  # one block, and blocks of 3 rows
        ce, grad = GB.ce_and_input_grad(weight, hs, targets, w, block_bytes=block)
        h = hs.clone().requires_grad_(True)
        ref = torch.nn.functional.cross_entropy(h @ weight.T, targets, reduction="none")
        (ref_grad,) = torch.autograd.grad((ref * w).sum(), h)
        torch.testing.assert_close(ce, ref.detach())
        torch.testing.assert_close(grad, ref_grad)


def test_packable_only_for_llama_decoders(tiny, frames):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert P.packable(tiny[0])
    assert not P.packable(GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)))


def test_layer_setting_changes_target(tiny, frames):
    model, tok = tiny
    df = frames["seqrec"]
    first = G.grad_norms(model, tok, df, "seqrec", layer=0, batch_size=5, progress=False)
    np.testing.assert_allclose(first, G.grad_norms_loop(model, tok, df, "seqrec", layer=0, progress=False),
                               rtol=1e-4)
    last = G.grad_norms(model, tok, df, "seqrec", layer=-1, batch_size=5, progress=False)
    assert not np.allclose(first, last)
    with pytest.raises(SignalError, match="grad_layer=5"):
        G.grad_norms(model, tok, df, "seqrec", layer=5, progress=False)


def test_plain_model_is_wrapped_like_a_seeded_lora(frames):
    model, tok = tiny_llama(seed=0)
    assert not hasattr(model, "peft_config")
    out = G.grad_norms(model, tok, frames["ctr"], "ctr", batch_size=5, lora_seed=3, progress=False)
    ref_model, _ = tiny_llama(seed=0, vocab_from=tok)
    ref = G.grad_norms_loop(G.ensure_lora(ref_model, lora_seed=3), tok, frames["ctr"], "ctr", progress=False)
    np.testing.assert_allclose(out, ref, rtol=1e-4)


def test_interrupted_run_resumes_identically(tiny, frames, tmp_path, monkeypatch):
    model, tok = tiny
    df = frames["seqrec"]
    kw = dict(batch_size=2, shard_size=3, progress=False)
    fresh = G.grad_norms(model, tok, df, "seqrec", shard_dir=tmp_path / "fresh", **kw)

    real, calls = GB.batch_norms, {"n": 0}

    def dies_on_third_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(GB, "batch_norms", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        G.grad_norms(model, tok, df, "seqrec", shard_dir=tmp_path / "run", **kw)
    shards = sorted((tmp_path / "run").glob("grads-*/shard_*.npy"))
    assert len(shards) == 1  # shard 0 (3 samples = 2 batches) finished; the 3rd batch died in shard 1
    assert not list((tmp_path / "run").glob("grads-*/*.tmp"))

    calls["n"] = -10**9  # never fail again; count the batches the resumed run needs
    start = calls["n"]
    resumed = G.grad_norms(model, tok, df, "seqrec", shard_dir=tmp_path / "run", **kw)
    assert calls["n"] - start == 5  # shards 1, 2, 3 (3 + 3 + 1 samples) in batches of 2; shard 0 not redone
    np.testing.assert_array_equal(resumed, fresh)
    np.testing.assert_allclose(resumed, G.grad_norms(model, tok, df, "seqrec", batch_size=4, progress=False),
                               rtol=1e-5)
    # a second call is served from the shards without any forward pass
    monkeypatch.setattr(GB, "batch_norms", lambda *a, **k: pytest.fail("recomputed a cached shard"))
    np.testing.assert_array_equal(G.grad_norms(model, tok, df, "seqrec", shard_dir=tmp_path / "run", **kw), fresh)


def test_cache_key_separates_settings(tiny, frames, tmp_path):
    model, tok = tiny
    df = frames["ctr"]
    G.grad_norms(model, tok, df, "ctr", shard_dir=tmp_path, shard_size=5, progress=False)
    G.grad_norms(model, tok, df, "ctr", shard_dir=tmp_path, shard_size=5, layer=0, progress=False)
    G.grad_norms(model, tok, df.iloc[:6], "ctr", shard_dir=tmp_path, shard_size=5, progress=False)
    assert len(list(tmp_path.glob("grads-*"))) == 3


def test_ranks_fill_disjoint_shards(tiny, frames, tmp_path):
    model, tok = tiny
    df = frames["ctr"]
    kw = dict(shard_dir=tmp_path, shard_size=3, batch_size=2, progress=False)
    assert G.grad_norms(model, tok, df, "ctr", rank=1, world_size=2, **kw) is None  # shards 1, 3 only
    names = sorted(p.name for p in tmp_path.glob("grads-*/shard_*.npy"))
    assert names == ["shard_00001.npy", "shard_00003.npy"]
    out = G.grad_norms(model, tok, df, "ctr", rank=0, world_size=2, **kw)
    np.testing.assert_allclose(out, G.grad_norms_loop(model, tok, df, "ctr", progress=False), rtol=1e-4)


@pytest.mark.slow
def test_two_process_accelerate_matches_one_process(tmp_path, frames):
    df = frames["ctr"]
    data = tmp_path / "ctr.parquet"
    df.to_parquet(data, index=False)
    common = ["--data", str(data), "--task", "ctr", "--model", "tiny", "--seed", "0", "--batch-size", "2",
              "--shard-size", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", ACCELERATE_DISABLE_RICH="1")
    # `accelerate launch --cpu` starts ONE process in accelerate 1.15 (no MPI hostfile); --multi_gpu goes through
    # torchrun and works without a GPU; the script's own --cpu then joins a gloo group on the CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "scripts" / "grads_distributed.py"), "--cpu", *common, "--shard-dir", str(tmp_path / "two"), "--out", str(tmp_path / "two.npy")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 1 of 2" in res.stderr and "rank 0 of 2" in res.stderr
    assert "rank 1 computes 2 of 4 shards" in res.stderr and "rank 0 computes 2 of 4 shards" in res.stderr
    two = np.load(tmp_path / "two.npy")

    model, tok = tiny_llama(seed=0)
    one = G.grad_norms(model, tok, df, "ctr", batch_size=2, shard_size=3, shard_dir=tmp_path / "one",
                       lora_seed=0, progress=False)
    np.testing.assert_allclose(two, one, rtol=1e-6)


def test_truncation_is_counted_and_keeps_the_answer_position(tiny, frames, caplog):
    model, tok = tiny
    df = frames["ctr"]
    full = encode(tok, df, "ctr", 512)
    cut = min(len(i) for i in full.ids) - 5
    with caplog.at_level(logging.WARNING):
        enc = encode(tok, df, "ctr", cut)
    assert enc.n_truncated == len(df)
    assert f"{len(df)} of {len(df)} ctr samples are longer than max_len={cut}" in caplog.text
    assert all(e == f[-cut:] for e, f in zip(enc.ids, full.ids))  # CTR keeps the end (the answer position)
    seq = encode(tok, frames["seqrec"], "seqrec", 40)
    assert all(len(i) == 40 for i in seq.ids) and seq.n_truncated == len(frames["seqrec"])
    out = G.grad_norms(model, tok, df, "ctr", max_len=cut, progress=False)
    assert np.isfinite(out).all()


def test_nan_loss_names_the_sample(frames):
    model, tok = tiny_llama(seed=0)
    df = frames["seqrec"].copy()
    df.loc[7, "input"] = df.loc[7, "input"] + " zqxjkv"
    enc = encode(tok, df, "seqrec", 512)
    others = set().union(*(set(ids) for k, ids in enumerate(enc.ids) if k != 7))
    token = next(t for t in enc.ids[7] if t not in others)

    def overflow(mod, inputs, out):  # an activation overflow in the one sample holding `token`
        return out.masked_fill((inputs[0] == token)[..., None], float("nan"))

    model.get_input_embeddings().register_forward_hook(overflow)  # (the tied output head stays finite)
    with pytest.raises(SignalError, match=r"loss \(nan\) for sample 7 \(1 in its batch\)"):
        G.grad_norms(model, tok, df, "seqrec", batch_size=4, progress=False)


def test_bad_inputs_fail_clearly(tiny, frames):
    model, tok = tiny
    with pytest.raises(SignalError, match="unknown task"):
        G.grad_norms(model, tok, frames["ctr"], "rating", progress=False)
    with pytest.raises(SignalError, match="label"):
        G.grad_norms(model, tok, frames["seqrec"].drop(columns="label"), "ctr", progress=False)

    prompt = "### Response:\n"
    assert len(tok("Surely yes indeed", add_special_tokens=False).input_ids) > 1
    with pytest.raises(SignalError, match="splits the answer 'Surely yes indeed' into"):
        yes_no_ids(tok, prompt, ("Surely yes indeed", "No"))
    with pytest.raises(SignalError, match="same token"):
        yes_no_ids(tok, prompt, ("No", "No"))

    plain, _ = tiny_llama(seed=0, vocab_from=tok)
    q_only = add_lora(plain, target_modules=("q_proj",))
    with pytest.raises(SignalError, match="no LoRA adapter on a module named 'v_proj'"):
        G.grad_norms(q_only, tok, frames["ctr"], "ctr", progress=False)

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ModelError, match="v_proj"):
        G.grad_norms(gpt2, tok, frames["ctr"], "ctr", progress=False)
