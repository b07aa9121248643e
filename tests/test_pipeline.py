"""The whole pipeline on the tiny model: both tasks end to end, stage caching across a re-run and a lambda change,
and skipping a finished job."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

import goracs.evaluate.ctr
import goracs.signals.embed
import goracs.signals.grads
import goracs.train
from goracs.__main__ import CONFIG_DIR
from goracs.pipeline import run_all

pytestmark = pytest.mark.slow  # whole pipelines on the tiny model

SMALL = ["model=tiny", "train=tiny", "train.epochs=2", "train.resume=false", "logger=none", "progress=false",
         "dataset.synthetic.n_users=200", "dataset.synthetic.n_items=160", "task.max_history=3",
         "task.pool.max_train=40", "task.pool.max_test=12", "task.budget=8", "task.itra.max_iters=5",
         "task.itra.cut_num=4", "eval.max_new_tokens=6", "signals.grad_batch_size=8"]


def config(tmp_path, *extra):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=["stage=all", f"paths.root_dir={tmp_path}", *SMALL, *extra])


@pytest.fixture
def calls(monkeypatch):
    """Count the expensive stage functions (still running the real ones)."""
    counts = {}

    def spy(mod, name):
        real = getattr(mod, name)

        def wrapped(*a, **k):
            counts[name] = counts.get(name, 0) + 1
            return real(*a, **k)

        monkeypatch.setattr(mod, name, wrapped)

    spy(goracs.signals.grads, "grad_norms")
    spy(goracs.signals.embed, "load_encoder")  # called only when some embedding is not cached
    spy(goracs.train, "train_lora")
    spy(goracs.evaluate.ctr, "evaluate_ctr")
    return counts


def test_ctr_end_to_end_and_cache_reuse(tmp_path, calls):
    cfg = config(tmp_path, "task=ctr", "selector=goracs")
    first = run_all(cfg, tmp_path / "run1")
    assert 0.0 <= first["auc"] <= 1.0 and first["logloss"] > 0
    assert first["budget"] == 8 and first["selector"] == "goracs" and first["lam"] == 0.5
    # label-enhanced ITRA: one POO trajectory per class, each descending
    assert set(first["poo_trajectories"]) == {"class 0", "class 1"}
    for traj in first["poo_trajectories"].values():
        assert all(b < a for a, b in zip(traj, traj[1:]))
    assert json.loads((tmp_path / "run1" / "metrics.json").read_text())["auc"] == first["auc"]
    assert calls["grad_norms"] == 1 and calls["train_lora"] == 1 and calls["evaluate_ctr"] == 1
    assert calls["load_encoder"] >= 1
    before = dict(calls)

    # the same job in a new run folder: every stage comes from the cache
    second = run_all(cfg, tmp_path / "run2")
    assert calls == before
    assert second["auc"] == first["auc"] and second["poo"] == first["poo"]

    # an evaluation setting changes: the cached adapter is loaded and evaluated again, nothing is retrained
    rebatched = run_all(config(tmp_path, "task=ctr", "selector=goracs", "eval.batch_size=3"), tmp_path / "run2b")
    assert calls["train_lora"] == 1 and calls["evaluate_ctr"] == 2
    assert rebatched["auc"] == pytest.approx(first["auc"], abs=1e-6)
    before = dict(calls)

    # the same run folder again: the finished job is skipped outright
    third = run_all(cfg, tmp_path / "run1")
    assert third["wall_seconds"] == first["wall_seconds"]

    # a lambda change recomputes selection and what follows, never the signals
    other = run_all(config(tmp_path, "task=ctr", "selector=goracs", "selector.lam=0"), tmp_path / "run3")
    assert calls["grad_norms"] == 1 and calls["load_encoder"] == before["load_encoder"]
    assert calls["train_lora"] == 2 and calls["evaluate_ctr"] == 3
    assert other["lam"] == 0.0


def test_seqrec_end_to_end_random(tmp_path):
    res = run_all(config(tmp_path, "task=seqrec", "selector=random"), tmp_path / "run")
    for k in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
        assert 0.0 <= res[k] <= 1.0
    assert res["hr@5"] <= res["hr@10"] and res["ndcg@5"] <= res["ndcg@10"]
    assert res["n_test"] == 12 and res["n_train_pool"] == 40
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert info["config"]["selector"]["name"] == "random"


def test_seqrec_only_selector_skips_ctr(tmp_path):
    assert run_all(config(tmp_path, "task=ctr", "selector=dealrec"), tmp_path / "run") == {}


def test_el2n_selector_after_a_warm_up_keeps_the_top_scores(tmp_path, monkeypatch):
    """The EL2N stage on a warmed-up (LoRA) model through the packed forward: the coreset is the top-n of the
    cached scores, and the scores are valid CTR prediction errors."""
    import numpy as np

    import goracs.signals.el2n as E

    packed_batches = []
    real = E._packed_batch
    monkeypatch.setattr(E, "_packed_batch", lambda *a, **k: packed_batches.append(1) or real(*a, **k))
    cfg = config(tmp_path, "task=ctr", "selector=el2n", "signals.el2n_warmup_epochs=1",
                 "signals.el2n_warmup_samples=16")
    out = run_all(cfg, tmp_path / "run")
    scores = [np.load(p) for p in tmp_path.rglob("el2n.npy")]
    assert len(scores) == 1 and len(scores[0]) == 40
    s = scores[0]
    assert np.all(np.isfinite(s)) and np.all((s >= 0) & (s <= np.sqrt(2) + 1e-6)) and np.ptp(s) > 0
    chosen = np.load(out["coreset"])
    assert len(chosen) == 8 and len(set(chosen.tolist())) == 8
    assert s[chosen].min() >= np.sort(s)[-8] - 1e-7  # the 8 largest scores
    assert len(packed_batches) == 5  # 40 samples in batches of 8, all through the packed forward


def test_metrics_record_the_budget_actually_used(tmp_path):
    """A pool smaller than the budget is used whole: metrics.json says how many samples were used (`budget`,
    what tables and budget sweeps group by) and what was asked for (`budget_requested`)."""
    cfg = config(tmp_path, "task=ctr", "selector=random", "proxy_check=false", "task.pool.max_train=6",
                 "train.epochs=1")
    res = run_all(cfg, tmp_path / "run")
    assert res["budget"] == 6 and res["budget_requested"] == 8 and res["n_train_pool"] == 6
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["budget"] == 6 and saved["budget_requested"] == 8


def test_proxy_check_is_its_own_stage_after_the_cached_metrics(tmp_path, monkeypatch):
    """The metrics are cached before the proxy check runs: a job stopped in the proxy check keeps its evaluation,
    and proxy_check=false never computes the pool's gradient norms for a selector that reads none."""
    import goracs.pipeline as P
    from goracs.cache import DONE

    calls = {"grads": 0, "eval": 0}
    real_grads, real_eval = goracs.signals.grads.grad_norms, goracs.evaluate.ctr.evaluate_ctr

    def grads(*a, **k):
        calls["grads"] += 1
        return real_grads(*a, **k)

    def ev(*a, **k):
        calls["eval"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(goracs.signals.grads, "grad_norms", grads)
    monkeypatch.setattr(goracs.evaluate.ctr, "evaluate_ctr", ev)
    off = run_all(config(tmp_path, "task=ctr", "selector=random", "proxy_check=false"), tmp_path / "off")
    assert "poo" not in off and calls == {"grads": 0, "eval": 1}

    def stopped(*a, **k):
        raise KeyboardInterrupt("stopped during the proxy check")

    monkeypatch.setattr(P, "proxy_values", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_all(config(tmp_path, "task=ctr", "selector=random", "seed=1"), tmp_path / "on")
    done = [d for d in (tmp_path / "cache" / "evaluate").iterdir() if (d / DONE).exists()]
    assert len(done) == 2 and calls["eval"] == 2  # the seed-1 evaluation was cached before the proxy check
    monkeypatch.undo()
    monkeypatch.setattr(goracs.evaluate.ctr, "evaluate_ctr", ev)
    res = run_all(config(tmp_path, "task=ctr", "selector=random", "seed=1"), tmp_path / "on")
    assert calls["eval"] == 2 and res["poo"] > 0 and res["test_loss"] > 0  # not evaluated again
    assert res["test_loss"] == pytest.approx(res["logloss"], rel=1e-3)  # the two-way loss is the log-loss (float32)
    assert any((d / "proxy.json").exists() for d in (tmp_path / "cache" / "proxy").iterdir())


def test_zero_epochs_evaluate_the_starting_model(tmp_path):
    """train.epochs=0: no fine-tuning, the starting model is what the evaluation scores (the pilot's zero-shot row)."""
    from goracs.evaluate.ctr import evaluate_ctr
    from goracs.models import tiny_llama
    from goracs.pipeline import pool, run_prepare

    cfg = config(tmp_path, "task=ctr", "selector=random", "train.epochs=0", "+train.task_overrides.ctr.epochs=0")
    res = run_all(cfg, tmp_path / "zero")
    assert res["train_report"]["zero_shot"] is True and res["train_report"]["steps"] == 0
    model, tok = tiny_llama(seed=0)
    direct = evaluate_ctr(model, tok, pool(cfg, run_prepare(cfg))["test"], {"progress": False})
    assert res["auc"] == pytest.approx(direct["auc"]) and res["logloss"] == pytest.approx(direct["logloss"])


def test_a_job_killed_while_training_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """The training stage keeps a checkpoint in its scratch folder: a job killed mid-training continues from the
    last checkpoint when run again and ends with the metrics of an uninterrupted job; the scratch then goes."""
    from goracs.train import loop

    monkeypatch.setenv("GORACS_TRAIN_CHECKPOINT_SECONDS", "0")
    whole = run_all(config(tmp_path / "a", "task=ctr", "selector=random"), tmp_path / "a" / "run")

    def killed(step):
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_checkpointed", killed)
    cfg = config(tmp_path / "b", "task=ctr", "selector=random")
    with pytest.raises(KeyboardInterrupt):
        run_all(cfg, tmp_path / "b" / "run")
    scratch = list((tmp_path / "b" / "cache" / "train").glob(".*.scratch"))
    assert len(scratch) == 1 and (scratch[0] / "train_state.pt").exists()
    monkeypatch.setattr(loop, "_checkpointed", lambda step: None)
    again = run_all(cfg, tmp_path / "b" / "run")
    report = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    trained = json.loads((next((tmp_path / "b" / "cache" / "train").glob("[!.]*")) / "train_report.json")
                         .read_text())
    assert trained["continued_from_step"] == 3 and report["auc"] == whole["auc"]
    assert again["logloss"] == whole["logloss"] and not scratch[0].exists()
