"""Sentence embeddings of the sample texts: text composition, determinism, the on-disk cache, bad paths."""

from __future__ import annotations

import numpy as np
import pytest

from goracs.models import ModelError
from goracs.prompts import render_prompt
from goracs.signals import embed as E
from goracs.signals.toy import toy_split


def test_sample_texts_follow_method_section_4():
    seq, ctr = toy_split(4, "seqrec", seed=0), toy_split(4, "ctr", seed=0)
    st = E.sample_texts(seq, "seqrec")
    assert st[1] == render_prompt(seq.instruction[1], seq.input[1]) + seq.output[1]  # response included
    ct = E.sample_texts(ctr, "ctr")
    assert ct[2] == render_prompt(ctr.instruction[2], ctr.input[2])
    assert not any(t.endswith(("Yes.", "No.")) for t in ct)  # the CTR label never enters
    flipped = ctr.assign(output=np.where(ctr.label == 1, "No.", "Yes."), label=1 - ctr.label)
    assert E.sample_texts(flipped, "ctr") == ct
    with pytest.raises(ValueError, match="lacks the column"):
        E.sample_texts(seq.drop(columns="output"), "seqrec")


def test_embeddings_are_deterministic_and_cached(tmp_path, monkeypatch):
    texts = E.sample_texts(toy_split(12, "seqrec", seed=3), "seqrec") + ["a short one", "a short one"]
    a = E.embed_texts(texts, batch_size=5, progress=False)
    b = E.embed_texts(texts, batch_size=5, progress=False)
    assert a.dtype == np.float32 and a.shape == (14, 384)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[-1], a[-2])
    assert np.linalg.norm(a[0] - a[1]) > 1e-3  # different texts, different vectors

    c = E.embed_texts(texts, batch_size=5, cache_dir=tmp_path, chunk_size=4, progress=False)
    np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)  # chunking does not change the values
    assert len(list(tmp_path.glob("embed-*/embeddings.npy"))) == 1
    monkeypatch.setattr(E, "load_encoder", lambda *a, **k: pytest.fail("cache miss: the encoder was loaded"))
    np.testing.assert_array_equal(E.embed_texts(texts, batch_size=5, cache_dir=tmp_path, chunk_size=4,
                                                progress=False), c)
    monkeypatch.undo()
    E.embed_texts(texts[:-1], cache_dir=tmp_path, chunk_size=4, progress=False)  # other texts: another key
    assert len(list(tmp_path.glob("embed-*/embeddings.npy"))) == 2


def test_interrupted_embedding_resumes_from_chunks(tmp_path, monkeypatch):
    texts = [f"item {i} of a small catalogue" for i in range(10)]
    real, calls = E.save_npy, {"n": 0}

    def dies_on_second_chunk(path, arr):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(path, arr)

    monkeypatch.setattr(E, "save_npy", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        E.embed_texts(texts, cache_dir=tmp_path, chunk_size=4, progress=False)
    assert len(list(tmp_path.glob("embed-*/part_*.npy"))) == 1
    monkeypatch.setattr(E, "save_npy", real)
    out = E.embed_texts(texts, cache_dir=tmp_path, chunk_size=4, progress=False)
    np.testing.assert_allclose(out, E.embed_texts(texts, progress=False), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob("embed-*/part_*.npy"))  # parts folded into the final array


def test_missing_encoder_path_fails_clearly(tmp_path):
    with pytest.raises(ModelError, match="encoder path does not exist.*no_such_encoder"):
        E.embed_texts(["x"], encoder=str(tmp_path / "no_such_encoder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        E.embed_texts(["x"], encoder=str(tmp_path / "empty"))
