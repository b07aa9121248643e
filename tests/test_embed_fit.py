"""Embedding input (method.md 4): texts too long for the sentence encoder lose their oldest history titles first
(instruction and target survive, the count is recorded), normalize_embeddings means what it says, and a plain
transformers folder (the paper's RoBERTa-base) is embedded offline with mean pooling over the non-pad tokens."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from goracs import prompts as P
from goracs.data.samples import build_samples
from goracs.signals import embed as E

WORDS = ["Legend", "Shadow", "Crystal", "Racing", "Deluxe", "Edition", "Collector", "Remastered", "Chronicles",
         "Ultimate", "Warriors", "Kingdom", "Galaxy", "Tactics", "Odyssey", "Frontier"]


def long_samples(task, template=None, lengths=(12, 12, 3), words=28, seed=0):
    """Samples whose ten-title histories are far longer than MiniLM's 256 word pieces (distinct titles), and the
    short windows of a user with few items, which fit."""
    rng = np.random.default_rng(seed)
    n_items = 30
    titles = {f"i{i}": f"Item{i} " + " ".join(rng.choice(WORDS, size=words)) for i in range(n_items)}
    rows = []
    for u, n in enumerate(lengths):
        for k, i in enumerate(rng.choice(n_items, size=n, replace=False)):
            r = int(rng.integers(1, 6))
            rows.append({"user": f"u{u}", "item": f"i{i}", "rating": float(r), "label": int(r > 3),
                         "timestamp": float(100 * u + k)})
    df, _ = build_samples(pd.DataFrame(rows), titles, task, max_history=10, progress=False, template=template)
    return df, titles


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])


def check_fitted(df, task, titles, texts, full, tok, limit):
    """Every fitted text fits, keeps the head of the prompt and the target, and only the oldest titles shrank."""
    tpl = P.template_of(df)
    for k, (t, f) in enumerate(zip(texts, full)):
        assert n_tokens(tok, t) <= limit
        if t == f:
            assert n_tokens(tok, f) <= limit
            continue
        head = tpl.prompt(df.instruction[k], "")
        head = head[:head.index(tpl.instruction) + len(tpl.instruction)]
        assert t.startswith(head)  # header and instruction intact
        target = titles[df.target[k]]
        assert t.endswith(df.output[k]) if task == "seqrec" else f'"{target}"?' in t  # the target survives
        newest = titles[df.history[k][-1]]
        assert f'"{newest}"' in t  # the newest history title is whole
        assert len(t) < len(f)


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("prompt_set", ["default", "paper"])
def test_long_texts_lose_oldest_history_first_and_keep_instruction_and_target(task, prompt_set):
    from omegaconf import OmegaConf

    from tests.test_prompts import ROOT

    tpl = None
    if prompt_set == "paper":
        tpl = P.resolve_template(OmegaConf.load(ROOT / "configs/prompt/paper.yaml"), "games", task)
    df, titles = long_samples(task, tpl)
    model = E.load_encoder("minilm")
    assert E.max_tokens_of(model) == 256
    full = E.sample_texts(df, task)
    texts, stats = E.fit_texts(df, task, model.tokenizer, 256, titles)
    over = sum(n_tokens(model.tokenizer, f) > 256 for f in full)
    assert 0 < over < len(full) and stats == {"n_texts": len(full), "max_tokens": 256, "n_over": over,
                                             "n_shortened": over, "n_truncated": 0}
    assert sum(t != f for t, f in zip(texts, full)) == over
    check_fitted(df, task, titles, texts, full, model.tokenizer, 256)
    # without titles nothing can be shortened: the texts stay whole and are counted as cut by the encoder
    same, st = E.fit_texts(df, task, model.tokenizer, 256, None)
    assert same == full and st["n_truncated"] == over and st["n_shortened"] == 0
    with pytest.raises(E.SignalError, match="cannot be rebuilt"):
        E.fit_texts(df, task, model.tokenizer, 256, {k: v + "!" for k, v in titles.items()})


def test_one_overlong_text_keeps_its_instruction_and_target():
    """A single sample whose history alone would overflow: the oldest titles go, then a cut inside a title."""
    titles = {f"i{k}": f"Game{k} " + " ".join(WORDS * 2) for k in range(11)}
    titles["i10"] = "The Target Game"
    inter = pd.DataFrame({"user": "u", "item": [f"i{k}" for k in range(11)], "label": 1, "rating": 5.0,
                          "timestamp": np.arange(11.0)})
    df, _ = build_samples(inter, titles, "seqrec", max_history=10, progress=False)
    df = df.iloc[[-1]].reset_index(drop=True)
    tok = E.load_encoder("minilm").tokenizer
    (text,), st = E.fit_texts(df, "seqrec", tok, 256, titles)
    assert st["n_shortened"] == 1 and n_tokens(tok, text) <= 256
    assert P.SEQREC_INSTRUCTION in text and text.endswith('"The Target Game"')
    assert '"Game9 ' in text and '"Game0 ' not in text  # the newest kept, the oldest gone
    kept = [k for k in range(10) if f'"Game{k} ' in text]
    assert kept == list(range(kept[0], 10))  # a contiguous newest part of the history


@pytest.mark.slow
def test_real_games_windows_are_shortened_and_counted(shared_data, tmp_path):
    from goracs.cache import StageCache
    from goracs.data.prepare import prepare
    from tests.test_data_samples import games_cfg

    model = E.load_encoder("minilm")
    for task in ("seqrec", "ctr"):
        d = prepare(games_cfg(), {"name": task, "max_history": 10, "n_negatives": 99}, StageCache(tmp_path),
                    progress=False)
        titles = dict(zip(d.catalogue.item_id.astype(str), d.catalogue.title.astype(str)))
        df = d.train.sample(1500, random_state=0).reset_index(drop=True)
        full = E.sample_texts(df, task)
        texts, st = E.fit_texts(df, task, model.tokenizer, 256, titles)
        # real windows overflow MiniLM (a few % of the samples here), and every one of them is made to fit
        assert st["n_over"] > 0.01 * len(df) and st["n_shortened"] == st["n_over"] and st["n_truncated"] == 0
        check_fitted(df, task, titles, texts, full, model.tokenizer, 256)


def test_embed_samples_records_the_count_beside_the_cached_embeddings(tmp_path, monkeypatch):
    df, titles = long_samples("ctr", lengths=(11, 11, 3))
    arr, st = E.embed_samples(df, "ctr", titles, cache_dir=tmp_path, progress=False)
    assert arr.shape == (len(df), 384) and st["n_shortened"] == st["n_over"] > 0
    (folder,) = [p for p in tmp_path.glob("embed-*") if p.is_dir()]  # (beside it: its lock file)
    assert json.loads((folder / "stats.json").read_text()) == st
    texts, _ = E.fit_texts(df, "ctr", E.load_encoder("minilm").tokenizer, 256, titles)
    np.testing.assert_allclose(arr, E.embed_texts(texts, progress=False), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(E, "load_encoder", lambda *a, **k: pytest.fail("cache miss: the encoder was loaded"))
    arr2, st2 = E.embed_samples(df, "ctr", titles, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(arr2, arr)
    assert st2 == st


def test_normalize_embeddings_true_is_unit_false_is_raw():
    texts = ["Halo 3", "a much longer text about racing games and their sequels", "Portal 2"]
    raw = E.embed_texts(texts, normalize=False, progress=False)
    unit = E.embed_texts(texts, normalize=True, progress=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # MiniLM's own Normalize is dropped
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    names = lambda m: [type(x).__name__ for x in m]  # noqa: E731
    assert names(E.load_encoder("minilm", normalize=True))[-1] == "Normalize"
    assert "Normalize" not in names(E.load_encoder("minilm", normalize=False))


def tiny_roberta(folder, max_len=512):
    """A randomly initialised RoBERTa with a byte-level BPE tokenizer trained here (no download)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["The user has played the following video games before: " + " ".join(WORDS)] * 4,
                            vocab_size=320, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(m.split()) for m in (folder / "merges.txt").read_text().splitlines()[1:] if m]
    tok = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=max_len)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=max_len + 2, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    RobertaModel(cfg).save_pretrained(folder)
    return tok


def test_plain_transformers_folder_gets_mean_pooling_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "roberta"
    folder.mkdir()
    tok = tiny_roberta(folder)
    texts = ["Legend Shadow", "a text with many more tokens than the first one, so that it pads the batch", "x"]
    raw = E.embed_texts(texts, encoder=str(folder), batch_size=3, progress=False)
    model = E.load_encoder(str(folder), normalize=False)
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling"] and E.max_tokens_of(model) == 512

    from transformers import AutoModel

    ref_model = AutoModel.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding present: the mean must skip it
    with torch.no_grad():
        h = ref_model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ref = ((h * m).sum(1) / m.sum(1)).numpy()
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    unit = E.embed_texts(texts, encoder=str(folder), normalize=True, progress=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)

    # the shortening works with its (byte-level BPE) tokenizer and limit too
    df, titles = long_samples("seqrec", words=12)
    full = E.sample_texts(df, "seqrec")
    texts, st = E.fit_texts(df, "seqrec", model.tokenizer, E.max_tokens_of(model), titles)
    assert st["n_over"] > 0 and st["n_shortened"] == st["n_over"]
    check_fitted(df, "seqrec", titles, texts, full, model.tokenizer, 512)
