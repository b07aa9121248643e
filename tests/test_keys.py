"""Derived stage keys (issue 15): a setting that changes an upstream artifact changes every downstream key, no
`signals` setting is left unassigned, a skipped finished job keeps its run_info.json, artifacts record their
commit."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

import goracs.selection.base
from goracs.keys import EXECUTION_ONLY, SIGNAL_SETTINGS, derive, unclaimed_signal_settings
from goracs.pipeline import pool, run_prepare, run_select, select_key, signal_key
from tests.test_pipeline import config


def test_every_signals_setting_belongs_to_a_signal_or_changes_only_speed(tmp_path):
    cfg = config(tmp_path)
    assert unclaimed_signal_settings(OmegaConf.to_container(cfg.signals, resolve=True)) == []
    assert unclaimed_signal_settings({**cfg.signals, "new_setting": 1}) == ["new_setting"]
    assert not (set().union(*SIGNAL_SETTINGS.values()) & EXECUTION_ONLY)


def test_derive_names_its_upstream_and_version():
    a = derive("pool", [], {"x": 1})
    b = derive("embeddings", [a], {"encoder": "minilm"})
    assert b.spec["upstream"] == {"pool": a.digest} and b.spec["version"] >= 1
    assert derive("embeddings", [derive("pool", [], {"x": 2})], {"encoder": "minilm"}).digest != b.digest
    with pytest.raises(KeyError, match="unknown stage"):
        derive("nope", [], {})


def _keys(tmp_path, *over, selector="goracs", task="ctr"):
    cfg = config(tmp_path, f"task={task}", f"selector={selector}", *over)
    p = pool(cfg, run_prepare(cfg))
    needs = {"goracs": ("embeddings", "val_embeddings", "grad_norms"), "grand": ("grad_norms",),
             "el2n": ("el2n",), "random": ()}[selector]
    return {"select": select_key(cfg, p, needs).digest,
            **{k: signal_key(cfg, p, k).digest for k in ("embeddings", "grad_norms", "el2n")}}


def test_upstream_settings_change_the_coreset_key(tmp_path):
    base = _keys(tmp_path)
    # an embedding setting: the embeddings and the coreset change, the gradient norms do not
    emb = _keys(tmp_path, "signals.normalize_embeddings=false")
    assert emb["embeddings"] != base["embeddings"] and emb["select"] != base["select"]
    assert emb["grad_norms"] == base["grad_norms"]
    # the LoRA of the gradient model: the norms and every coreset built on them
    lora = _keys(tmp_path, "model.lora.r=2")
    assert lora["grad_norms"] != base["grad_norms"] and lora["select"] != base["select"]
    assert lora["embeddings"] == base["embeddings"]
    g0, g1 = _keys(tmp_path, selector="grand"), _keys(tmp_path, "model.lora.alpha=32", selector="grand")
    assert g0["select"] != g1["select"]
    # the EL2N warm-up: its seed, and the training settings once a warm-up runs
    e0 = _keys(tmp_path, selector="el2n")
    assert _keys(tmp_path, "signals.el2n_warmup_epochs=1", selector="el2n")["select"] != e0["select"]
    w0 = _keys(tmp_path, "signals.el2n_warmup_epochs=1", selector="el2n")
    assert _keys(tmp_path, "signals.el2n_warmup_epochs=1", "signals.el2n_warmup_seed=3",
                 selector="el2n")["select"] != w0["select"]
    assert _keys(tmp_path, "signals.el2n_warmup_epochs=1", "train.lr=0.1", selector="el2n")["select"] != w0["select"]
    assert _keys(tmp_path, "train.lr=0.1", selector="el2n")["select"] == e0["select"]  # no warm-up: no training
    # settings that change only speed leave every key alone; a random coreset reads no signal
    assert _keys(tmp_path, "signals.grad_batch_size=2", "signals.embed_batch_size=7") == base
    r0 = _keys(tmp_path, selector="random")
    assert _keys(tmp_path, "signals.normalize_embeddings=false", "model.lora.r=2", selector="random")["select"] == \
        r0["select"]
    # the prompt template is inside the prepared samples: it changes the pool and so every key
    assert _keys(tmp_path, "prompt=paper")["select"] != base["select"]
    # how the cost is stored (dense or blocked, checked exactly) is not which coreset it gives; lambda is
    assert _keys(tmp_path, "selector.cost_storage=blocked", "selector.dense_max_gib=1") == base
    assert _keys(tmp_path, "selector.lam=0.1")["select"] != base["select"]


@pytest.mark.slow
def test_a_changed_embedding_setting_recomputes_the_coreset(tmp_path, monkeypatch):
    calls = []
    real = goracs.selection.base.Selector.select

    def spy(self, *a, **k):
        calls.append(type(self).__name__)
        return real(self, *a, **k)

    monkeypatch.setattr(goracs.selection.base.Selector, "select", spy)
    cfg = config(tmp_path, "task=ctr", "selector=goracs")
    p = pool(cfg, run_prepare(cfg))
    first = run_select(cfg, p)
    assert run_select(cfg, p)["path"] == first["path"] and len(calls) == 1  # cached
    cfg2 = config(tmp_path, "task=ctr", "selector=goracs", "signals.normalize_embeddings=false")
    second = run_select(cfg2, pool(cfg2, run_prepare(cfg2)))
    assert len(calls) == 2 and second["path"] != first["path"]
    made = json.loads((first["path"] / "made_by.json").read_text())  # every artifact records its commit
    assert "commit" in made and "dirty" in made


@pytest.mark.slow
def test_a_skipped_finished_job_keeps_its_run_info(tmp_path):
    from goracs.__main__ import run

    cfg = config(tmp_path, "task=ctr", "selector=random", "proxy_check=false")
    out = tmp_path / "job"
    run(cfg, out)
    info = out / "run_info.json"
    first = info.read_text()
    info.write_text(first.replace('"seed": 0', '"seed": 0, "marker": "the run that made the metrics"'))
    kept = info.read_text()
    again = run(cfg, out)
    assert again == json.loads((out / "metrics.json").read_text())
    assert info.read_text() == kept  # not rewritten by the skipped job


def test_progress_false_silences_the_evaluation_bars_without_changing_its_key(tmp_path):
    from goracs.pipeline import eval_settings

    on, off = config(tmp_path, "progress=true"), config(tmp_path, "progress=false")
    assert eval_settings(on)["progress"] is True and eval_settings(off)["progress"] is False
    assert eval_settings(on, for_key=True) == eval_settings(off, for_key=True)
    assert eval_settings(config(tmp_path, "progress=true", "eval.progress=false"))["progress"] is False


def test_the_prepared_samples_key_holds_only_what_the_build_reads(tmp_path):
    """A run's budget, lambda, ITRA or pool caps (selector business) leave the prepared samples and every signal
    alone; the history length and SeqRec's test negatives change them."""
    from goracs.data.prepare import prepare_key

    def prepared(*over, task="ctr"):
        cfg = config(tmp_path, f"task={task}", "selector=goracs", *over)
        return run_prepare(cfg).path, _keys(tmp_path, *over, task=task)

    base_path, base = prepared()
    for over in (["task.budget=5"], ["task.lam=0.9"], ["task.itra.max_iters=7", "task.itra.cut_num=2"],
                 ["+task.n_negatives=3"]):  # CTR has no test negatives
        path, keys = prepared(*over)
        assert path == base_path, over
        assert {k: keys[k] for k in ("embeddings", "grad_norms", "el2n")} == \
            {k: base[k] for k in ("embeddings", "grad_norms", "el2n")}, over
    assert prepared("task.budget=5")[1]["select"] != base["select"]  # the coreset does change
    assert prepared("task.lam=0.9")[1]["select"] != base["select"]
    # the pool caps draw another pool from the same prepared samples
    path, keys = prepared("task.pool.max_train=20")
    assert path == base_path and keys["grad_norms"] != base["grad_norms"]
    # what the build reads changes the samples and so every key
    path, keys = prepared("task.max_history=2")
    assert path != base_path and keys["grad_norms"] != base["grad_norms"]
    s_path, _ = prepared(task="seqrec")
    assert prepared("task.n_negatives=5", task="seqrec")[0] != s_path
    # a setting the build never reads, added to the task config, is not in the key
    cfg = config(tmp_path, "task=ctr")
    ds, task = OmegaConf.to_container(cfg.dataset, resolve=True), OmegaConf.to_container(cfg.task, resolve=True)
    assert prepare_key(ds, {**task, "anything": 1}, 0) == prepare_key(ds, task, 0)
    assert prepare_key(ds, task, 0) != prepare_key(ds, {**task, "max_history": 2}, 0)


def test_a_moved_data_folder_keeps_the_prepared_samples(tmp_path):
    """The input files enter the key by name and content, not by where they lie: a copied data folder finds the
    same prepared samples; a changed byte in a file, or a changed dataset setting, does not."""
    import gzip
    import shutil

    from goracs.data.datasets import input_files
    from goracs.data.prepare import prepare_key

    cfg = config(tmp_path, "task=ctr")
    ds, task = OmegaConf.to_container(cfg.dataset, resolve=True), OmegaConf.to_container(cfg.task, resolve=True)
    files = input_files(ds)  # the synthetic generator writes them
    raw = tmp_path / "elsewhere"
    raw.mkdir()
    for p in files.values():
        shutil.copy(p, raw / p.name)
    moved = {"name": "moved", "format": "raw2018", "root": str(raw), "min_history": ds["min_history"],
             "reviews_file": files["reviews"].name, "meta_file": files["meta"].name, "split": ds["split"]}
    k = prepare_key(moved, task, 0)
    other = tmp_path / "other"
    shutil.copytree(raw, other)
    assert prepare_key({**moved, "root": str(other)}, task, 0) == k
    assert prepare_key({**ds, "root": str(tmp_path / "regenerated")}, task, 0) == prepare_key(ds, task, 0)
    # every other dataset setting is read by the build: each stays in the key
    for change in ({"min_history": 2}, {"split": {**ds["split"], "n_test": 3}}, {"min_title_len": 9},
                   {"skip_bad_lines": True}, {"name": "renamed"}):
        assert prepare_key({**moved, **change}, task, 0) != k, change
    with gzip.open(other / files["meta"].name, "ab") as f:
        f.write(b"\n")  # one more byte in the metadata
    assert prepare_key({**moved, "root": str(other)}, task, 0) != k
