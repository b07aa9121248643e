"""Stage functions: each reads explicit inputs, writes an artifact through the stage cache under a key derived
from its upstream keys and its own settings (goracs/keys.py), and returns it. The demo and stats stages are in
goracs/demo.py, the aggregate stage in goracs/report/study.py, the configured LLM in goracs/llm.py."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from goracs.cache import StageCache
from goracs.config import to_dict as as_dict
from goracs.data.prepare import PreparedData, prepare
from goracs.llm import adapted_model, base_model, device_of, init_adapter, model_key
from goracs.io import save_npy, write_json

log = logging.getLogger(__name__)

def stage_cache(cfg: DictConfig) -> StageCache:
    """The project-wide stage cache."""
    return StageCache(cfg.paths.cache_dir)


def run_prepare(cfg: DictConfig, task: str | None = None) -> PreparedData:
    """Prepare (or load) the samples of the configured dataset for one task."""
    task_cfg = as_dict(cfg.task)
    if task is not None and task != task_cfg["name"]:
        task_cfg = {**task_cfg, "name": task}
    prompt_cfg = as_dict(cfg.prompt) if cfg.get("prompt") is not None else None  # None: the generic default set
    return prepare(as_dict(cfg.dataset), task_cfg, stage_cache(cfg), seed=int(cfg.get("data_seed", 0)),
                   progress=bool(cfg.progress), prompt_cfg=prompt_cfg)


def pool(cfg: DictConfig, data: PreparedData) -> dict[str, Any]:
    """The samples the run works on: the prepared splits, optionally capped (seeded) by `task.pool`."""
    from goracs.keys import derive

    caps = as_dict(cfg.task.get("pool") or {})
    # the prepared samples' folder name is the hash of their key (dataset, input files by content, task, prompt)
    out: dict[str, Any] = {"key": derive("pool", [], {"prepare": data.path.name, "caps": caps,
                                                      "data_seed": int(cfg.get("data_seed", 0))})}
    # the data seed, not the run seed: every seed of a table sees the same pool and test samples
    rng = np.random.default_rng(int(cfg.get("data_seed", 0)) + 7919)
    for split in ("train", "valid", "test"):
        df = data.split(split)
        cap = caps.get(f"max_{split}")
        if cap is not None and len(df) > int(cap):
            keep = np.sort(rng.choice(len(df), size=int(cap), replace=False))
            df = df.iloc[keep].reset_index(drop=True)
        out[split] = df
    out["catalogue"] = data.catalogue
    return out


def compute_embeddings(cfg: DictConfig, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Sentence embeddings of the train and validation texts (method.md 4), cached by encoder and texts."""
    from goracs.signals.embed import embed_samples

    s = cfg.signals
    task = cfg.task.name
    # texts too long for the encoder lose their oldest history titles (catalogue titles); counts in stats.json
    titles = dict(zip(p["catalogue"]["item_id"].astype(str), p["catalogue"]["title"].astype(str)))
    kw = dict(encoder=s.encoder, batch_size=int(s.embed_batch_size), cache_dir=Path(cfg.paths.cache_dir) / "embed",
              device=device_of(cfg), normalize=bool(s.get("normalize_embeddings", False)),
              progress=bool(cfg.progress), titles=titles)
    return (embed_samples(p["train"], task, **kw)[0], embed_samples(p["valid"], task, **kw)[0])


def train_settings(cfg: DictConfig, for_key: bool = False) -> dict[str, Any]:
    """The `train` group as the stages use it, with the run's single LoRA, device and thread settings: the LoRA
    is model.lora (the same node the gradient norms and EL2N use; train.lora is for scripts/finetune.py alone), the
    device is the top-level `device` and the threads the top-level `threads`. For a key, the thread count (speed
    only) and `resume` are left out."""
    t = {**as_dict(cfg.train), "lora": as_dict(cfg.model.lora), "device": device_of(cfg),
         "num_threads": cfg.get("threads")}
    return _key_part(t) if for_key else t


def _key_part(train: dict[str, Any]) -> dict[str, Any]:
    """Training settings as they enter a key: the thread count (speed only) and `resume` left out."""
    return {k: v for k, v in train.items() if k not in ("num_threads", "resume")}


def eval_settings(cfg: DictConfig, for_key: bool = False) -> dict[str, Any]:
    """The `eval` group with the run's thread setting (left out of a key: speed only). The run's `progress=false`
    silences the evaluation's bars too; the key keeps `eval.progress` as configured (it always has, and changing
    it would orphan every cached evaluation)."""
    e = {**as_dict(cfg.eval), "num_threads": cfg.get("threads")}
    if for_key:
        return {k: v for k, v in e.items() if k != "num_threads"}
    return {**e, "progress": bool(e.get("progress", True)) and bool(cfg.get("progress", True))}


def signal_key(cfg: DictConfig, p: dict[str, Any], kind: str):
    """The derived key of one signal of the pool: the pool's key, the signal's `signals` settings (keys.py),
    and for the LM signals the model (with LoRA settings and the initial adapter's content) and, for EL2N after
    a warm-up fine-tune, the training settings."""
    from goracs.keys import derive, signal_settings

    settings: dict[str, Any] = {"task": cfg.task.name, "signals": signal_settings(kind, as_dict(cfg.signals))}
    if kind in ("grad_norms", "el2n"):
        settings["model"] = model_key(cfg)
    if kind == "el2n" and int(cfg.signals.el2n_warmup_epochs) > 0:
        settings["train"] = train_settings(cfg, for_key=True)
    return derive(kind, [p["key"]], settings)


def compute_grad_norms(cfg: DictConfig, p: dict[str, Any]) -> np.ndarray:
    """Per-sample LoRA-B gradient norms of the train pool, cached and resumable in shards."""
    from goracs.signals.grads import grad_norms

    s = cfg.signals
    key = signal_key(cfg, p, "grad_norms").spec
    cache = stage_cache(cfg)
    out = cache.path("grads", key)
    with cache.lock("grads", key):  # two jobs that need the same norms compute them once
        if not cache.done("grads", key):
            model, tok = adapted_model(cfg)  # wrapped with LoRA in place: never the shared copy
            norms = grad_norms(model, tok, p["train"], cfg.task.name, layer=int(s.grad_layer),
                               batch_size=int(s.grad_batch_size), max_len=int(s.max_len),
                               shard_dir=out.with_name(out.name + ".shards"), shard_size=int(s.grad_shard_size),
                               lora_seed=int(s.lora_seed), lora=as_dict(cfg.model.lora),
                               progress=bool(cfg.progress))
            with cache.build("grads", key) as tmp:
                save_npy(tmp / "grad_norms.npy", np.asarray(norms, dtype=np.float32))
    return np.load(out / "grad_norms.npy")


def compute_el2n(cfg: DictConfig, p: dict[str, Any]) -> np.ndarray:
    """EL2N scores of the train pool, after an optional warm-up fine-tune on a random subset."""
    s = cfg.signals
    warm = int(s.el2n_warmup_epochs)
    key = signal_key(cfg, p, "el2n").spec
    cache = stage_cache(cfg)
    with cache.lock("el2n", key):
        if not cache.done("el2n", key):
            _build_el2n(cfg, p, key, cache, warm)
    return np.load(cache.path("el2n", key) / "el2n.npy")


def _build_el2n(cfg: DictConfig, p: dict[str, Any], key: dict, cache: StageCache, warm: int) -> None:
    """Score the pool (after the warm-up fine-tune when warm > 0) and store the EL2N artifact."""
    from goracs.signals.el2n import el2n_scores

    s = cfg.signals
    model, tok = base_model(cfg, fresh=True) if warm > 0 else adapted_model(cfg)
    if warm > 0:
        from goracs.train import train_lora

        rng = np.random.default_rng(int(s.el2n_warmup_seed))
        n = min(int(s.el2n_warmup_samples), len(p["train"]))
        sub = p["train"].iloc[np.sort(rng.choice(len(p["train"]), size=n, replace=False))]
        tcfg = {**train_settings(cfg), "epochs": warm}
        model, _ = train_lora(model, tok, sub, p["valid"], cfg.task.name, tcfg,
                              cache.path("el2n", key).with_name(cache.path("el2n", key).name + ".warmup"),
                              init_adapter=init_adapter(cfg), progress=bool(cfg.get("progress", True)))
    scores = el2n_scores(model, tok, p["train"], cfg.task.name, batch_size=int(s.el2n_batch_size),
                         max_len=int(s.max_len), progress=bool(cfg.progress))
    with cache.build("el2n", key) as tmp:
        save_npy(tmp / "el2n.npy", np.asarray(scores, dtype=np.float32))


def build_signals(cfg: DictConfig, p: dict[str, Any], needs: tuple[str, ...]):
    """The Signals a selector needs (computed or loaded from the cache)."""
    from goracs.selection.base import Signals

    sig = Signals(n=len(p["train"]))
    if {"embeddings", "val_embeddings"} & set(needs):
        sig.embeddings, sig.val_embeddings = compute_embeddings(cfg, p)
    if "grad_norms" in needs:
        sig.grad_norms = compute_grad_norms(cfg, p)
    if "el2n" in needs:
        sig.el2n = compute_el2n(cfg, p)
    if cfg.task.name == "ctr":
        sig.labels = p["train"]["label"].to_numpy().astype(np.int64)
        sig.val_labels = p["valid"]["label"].to_numpy().astype(np.int64)
    if cfg.task.name == "seqrec":
        sig.extra = sequence_signals(p)  # cheap; surrogate-model selectors (DEALRec) train on these sequences
    return sig


def sequence_signals(p: dict[str, Any]) -> dict[str, Any]:
    """Item-index histories and targets of the train pool (for surrogate-model selectors such as DEALRec)."""
    items = {it: k for k, it in enumerate(p["catalogue"]["item_id"])}
    return {"histories": [[items[i] for i in h if i in items] for h in p["train"]["history"]],
            "targets": np.array([items.get(t, -1) for t in p["train"]["target"]], dtype=np.int64),
            "n_items": len(items)}


def select_key(cfg: DictConfig, p: dict[str, Any], needs) -> Any:
    """The coreset's derived key: the pool's and every used signal's keys, the resolved selector settings and the
    seed."""
    from goracs.keys import NEED_TO_SIGNAL, SELECTOR_EXECUTION_ONLY, derive

    kinds = sorted({NEED_TO_SIGNAL[n] for n in needs if n in NEED_TO_SIGNAL})
    settings = {k: v for k, v in as_dict(cfg.selector).items() if k not in SELECTOR_EXECUTION_ONLY}
    return derive("select", [p["key"], *(signal_key(cfg, p, k) for k in kinds)],
                  {"task": cfg.task.name, "selector": settings, "seed": int(cfg.seed), "needs": sorted(needs)})


def run_select(cfg: DictConfig, p: dict[str, Any]) -> dict[str, Any]:
    """Select the coreset with the configured selector; cached by signals, selector settings, budget and seed."""
    from goracs.selection.build import build_selector

    _, budget, selector = build_selector(cfg.selector)  # the _target_ class with the node's settings
    budget = int(budget)
    needs = tuple(getattr(selector, "needs", ())) + tuple(getattr(selector, "extra_needs", ()))
    skey = select_key(cfg, p, needs)
    key = skey.spec
    cache = stage_cache(cfg)
    with cache.lock("select", key):
        if not cache.done("select", key):
            sig = build_signals(cfg, p, needs)
            t = time.perf_counter()
            sel = selector.select(sig, budget, seed=int(cfg.seed))
            sel.report.setdefault("select_seconds", time.perf_counter() - t)
            with cache.build("select", key) as tmp:
                save_npy(tmp / "indices.npy", sel.indices)
                write_json(tmp / "report.json", sel.report)
    path = cache.path("select", key)
    return {"key": key, "stage_key": skey, "path": path, "indices": np.load(path / "indices.npy"),
            "report": json.loads((path / "report.json").read_text())}


def run_train(cfg: DictConfig, p: dict[str, Any], sel: dict[str, Any], logger=None) -> dict[str, Any]:
    """LoRA fine-tuning on the coreset; the adapter is cached by the selection, model and training settings."""
    from goracs.keys import derive
    from goracs.train import train_config, train_lora

    # the run's seed seeds fine-tuning too, so seeds vary the whole pipeline, not only the selection
    tcfg = {**train_settings(cfg), "seed": int(cfg.seed)}
    tkey = derive("train", [sel["stage_key"], p["key"]],
                  {"task": cfg.task.name, "model": model_key(cfg), "train": _key_part(tcfg)})
    key = tkey.spec
    cache = stage_cache(cfg)
    out = cache.path("train", key)
    if int(train_config(tcfg, cfg.task.name)["epochs"]) == 0:
        # no fine-tuning (train.epochs=0): the starting model (the base LLM, with model.init_adapter if set) is
        # what the evaluation scores, e.g. the zero-shot row of a learnability pilot
        report = {"zero_shot": True, "steps": 0, "init_adapter": init_adapter(cfg)}
        with cache.lock("train", key):
            if not cache.done("train", key):
                with cache.build("train", key) as tmp:
                    write_json(tmp / "train_report.json", report)
        return {"key": key, "stage_key": tkey, "path": out, "model": None, "tokenizer": None, "report": report}
    with cache.lock("train", key):  # a second job on the same coreset and settings waits for the first
        if cache.done("train", key):
            # loaded only if a later stage needs the model (an evaluation already cached does not)
            report = {**json.loads((out / "train_report.json").read_text()), "cached": True}
            return {"key": key, "stage_key": tkey, "path": out, "model": None, "tokenizer": None, "report": report}
        model, tok, coreset = *base_model(cfg, fresh=True), p["train"].iloc[sel["indices"]].reset_index(drop=True)
        # built in a temporary folder renamed into place complete; a killed run continues from its scratch checkpoint
        with cache.build("train", key) as tmp:
            model, report = train_lora(model, tok, coreset, p["valid"], cfg.task.name, tcfg, tmp, logger=logger,
                                       init_adapter=init_adapter(cfg), progress=bool(cfg.get("progress", True)),
                                       checkpoint_dir=cache.scratch("train", key))
            report["adapter_dir"] = str(out / "adapter")
            write_json(tmp / "train_report.json", report)
    return {"key": key, "stage_key": tkey, "path": out, "model": model, "tokenizer": tok, "report": report}


def _trained_model(cfg: DictConfig, trained: dict[str, Any]):
    """(model, tokenizer) of a trained adapter, loaded onto the base model when the training stage was cached; the
    starting model itself when no fine-tuning ran (train.epochs=0)."""
    if trained["model"] is None and trained["report"].get("zero_shot"):
        trained["model"], trained["tokenizer"] = adapted_model(cfg)
    if trained["model"] is None:
        from peft import PeftModel

        base, tok = base_model(cfg, fresh=True)
        trained["model"] = PeftModel.from_pretrained(base, str(trained["path"] / "adapter"), is_trainable=False)
        trained["tokenizer"] = tok
    return trained["model"], trained["tokenizer"]


def evaluate_key(cfg: DictConfig, p: dict[str, Any], trained: dict[str, Any]):
    """The evaluation stage's key: the adapter, the test samples and the evaluation settings."""
    from goracs.keys import derive

    return derive("evaluate", [trained["stage_key"], p["key"]],
                  {"task": cfg.task.name, "eval": eval_settings(cfg, for_key=True)})


def run_evaluate(cfg: DictConfig, p: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the fine-tuned model on the test split; cached by the adapter, the test samples and the evaluation
    settings (before any proxy check runs, so a job stopped during the proxy check keeps its metrics)."""
    key = evaluate_key(cfg, p, trained).spec
    cache = stage_cache(cfg)
    with cache.lock("evaluate", key):
        if not cache.done("evaluate", key):
            t, c = time.perf_counter(), time.process_time()
            model, tok = _trained_model(cfg, trained)
            model.eval()
            if cfg.task.name == "ctr":
                from goracs.evaluate.ctr import evaluate_ctr

                metrics = evaluate_ctr(model, tok, p["test"], eval_settings(cfg))
            else:
                from goracs.evaluate.seqrec import evaluate_seqrec

                base, _ = base_model(cfg)
                metrics = evaluate_seqrec(model, base, tok, p["test"], p["catalogue"], eval_settings(cfg),
                                          cache_dir=Path(cfg.paths.cache_dir) / "catalogue")
            metrics["eval_seconds"] = time.perf_counter() - t
            metrics["eval_cpu_seconds"] = time.process_time() - c
            with cache.build("evaluate", key) as tmp:
                write_json(tmp / "metrics.json", metrics)
    return json.loads((cache.path("evaluate", key) / "metrics.json").read_text())


PROXY = ("poo", "poo_lam", "test_loss")


def trajectories(report: dict[str, Any]) -> dict[str, list[float]]:
    """POO after each accepted exchange: one trajectory, or one per class for label-enhanced ITRA."""
    if report.get("poo_trajectory"):
        return {"all": list(report["poo_trajectory"])}
    return {f"class {c}": list(r["poo_trajectory"]) for c, r in (report.get("per_class") or {}).items()
            if r.get("poo_trajectory")}


def run_logger(cfg: DictConfig, out_dir: Path, job_type: str):
    """The configured W&B (or no-op) logger for one run, writing under the run's folder."""
    from goracs.report.dashboard import run_keys
    from goracs.report.wandb import make_logger

    over: dict[str, Any] = {"dir": str(out_dir)}
    if cfg.logger.get("backend", "none") != "none":
        over["group"] = cfg.logger.get("group") or f"{cfg.dataset.name}-{cfg.task.name}"
        over["job_type"] = cfg.logger.get("job_type") or job_type
        over["name"] = cfg.logger.get("name") or \
            f"{cfg.dataset.name}-{cfg.task.name}-{cfg.selector.name}-n{cfg.selector.budget}-s{cfg.seed}"
        over["tags"] = list(cfg.logger.get("tags") or []) + [cfg.dataset.name, cfg.task.name, cfg.selector.name]
    out_dir.mkdir(parents=True, exist_ok=True)
    return make_logger(cfg.logger, {**as_dict(cfg), **run_keys(cfg)}, **over)  # + flat keys the dashboard reads


def _ctr_loss_from_metrics(cfg: DictConfig, metrics: dict[str, Any] | None) -> bool:
    """True when the CTR test loss is the evaluation's own log-loss: the two-way objective, scored from the Yes/No
    logits, per-sample P(Yes) and labels present (then no second pass over the test samples is needed)."""
    from goracs.train import train_config

    if cfg.task.name != "ctr" or not metrics or metrics.get("method") != "logits":
        return False
    if not (metrics.get("p_yes") and metrics.get("labels")):
        return False
    return train_config(train_settings(cfg), "ctr")["ctr_loss"] == "two_way"


def run_proxy(cfg: DictConfig, p: dict[str, Any], sel: dict[str, Any], trained: dict[str, Any],
              metrics: dict[str, Any] | None = None) -> dict:
    """The proxy check as its own cached stage (`proxy_check: true`): the coreset's POO at the task's lambda and
    the fine-tuned model's mean test loss. Its cost: the embeddings and the gradient norms of the WHOLE pool (for a
    selector that reads no signal, e.g. random, these are computed here: about a CPU-second per sample for the
    gradient norms of SmolLM2-135M), one exact OT solve, and one loss pass over the test samples (CTR with the
    two-way loss: none, the test loss is the mean -log P(label) of the evaluation's own P(Yes), given `metrics`)."""
    from goracs.keys import derive

    upstream = [trained["stage_key"], p["key"], signal_key(cfg, p, "embeddings"), signal_key(cfg, p, "grad_norms")]
    from_metrics = _ctr_loss_from_metrics(cfg, metrics)
    settings = {"task": cfg.task.name, "lam": float(cfg.task.get("lam", 0.0)), "coreset": sel["path"].name}
    if from_metrics:
        upstream.append(evaluate_key(cfg, p, trained))
        settings["test_loss"] = "evaluation"
    key = derive("proxy", upstream, settings).spec
    cache = stage_cache(cfg)
    with cache.lock("proxy", key):
        if not cache.done("proxy", key):
            t = time.perf_counter()
            values = proxy_values(cfg, p, sel, trained, metrics if from_metrics else None)
            values["proxy_seconds"] = time.perf_counter() - t
            with cache.build("proxy", key) as tmp:
                write_json(tmp / "proxy.json", values)
    return json.loads((cache.path("proxy", key) / "proxy.json").read_text())


def proxy_values(cfg: DictConfig, p: dict[str, Any], sel: dict[str, Any], trained: dict[str, Any],
                 metrics: dict[str, Any] | None = None) -> dict:
    """POO of the coreset (at the task's lambda) and the fine-tuned model's mean test loss: the proxy check.
    With `metrics` (CTR, two-way loss) the test loss is the evaluation's -log P(label), not a second pass."""
    from goracs.selection.cost import compute_cost
    from goracs.selection.ot import poo
    from goracs.train import sequence_loss

    if metrics is None:
        _trained_model(cfg, trained)
    emb, val = compute_embeddings(cfg, p)
    # the task's lambda for every run, so that the POO of every selector's coreset is on one scale (a selector's
    # own `lam`, e.g. DEALRec's effort weight or a lambda sweep's value, is another quantity)
    lam = float(cfg.task.get("lam", 0.0))
    C = compute_cost(emb, val, compute_grad_norms(cfg, p), lam, device="cpu")
    value = poo(C[sel["indices"]])[0]
    from goracs.train import train_config

    if metrics is not None:
        py = np.clip(np.asarray(metrics["p_yes"], dtype=np.float64), 1e-12, 1 - 1e-12)
        y = np.asarray(metrics["labels"], dtype=np.int64)
        nll = -np.where(y == 1, np.log(py), np.log1p(-py))
        return {"poo": float(value), "poo_lam": lam, "test_loss": float(nll.mean())}
    tc = train_config(train_settings(cfg), cfg.task.name)
    losses = sequence_loss(trained["model"], trained["tokenizer"], p["test"], cfg.task.name,
                           cutoff_len=int(tc["cutoff_len"]), batch_size=int(tc["eval_batch_size"]),
                           truncation=tc["truncation"], add_eos=bool(tc["add_eos"]), ctr_loss=tc["ctr_loss"])
    return {"poo": float(value), "poo_lam": lam, "test_loss": float(np.mean(losses))}


def finished_result(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """The result of a job that already finished in `out_dir` with the same resolved config (skip_finished),
    else None."""
    done = Path(out_dir) / "metrics.json"
    if not (done.exists() and cfg.get("skip_finished", True)):
        return None
    prev = json.loads(done.read_text())
    return prev if prev.get("config") == as_dict(cfg) else None


def run_all(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """prepare -> signals -> select -> train -> evaluate for one dataset, task, selector and seed."""
    out_dir = Path(out_dir)
    if cfg.selector.name in (cfg.get("seqrec_only_selectors") or []) and cfg.task.name != "seqrec":
        log.warning("%s is a SeqRec-only selector: %s skipped", cfg.selector.name, cfg.task.name)
        return {}
    prev = finished_result(cfg, out_dir)
    if prev is not None:
        log.info("%s already finished with this config: skipped", out_dir)
        return prev
    done = out_dir / "metrics.json"
    t0, c0 = time.perf_counter(), time.process_time()
    data = run_prepare(cfg)
    p = pool(cfg, data)
    with run_logger(cfg, out_dir, "pipeline") as logger:
        sel = run_select(cfg, p)
        logger.log_coreset(sel["indices"])
        trained = run_train(cfg, p, sel, logger=logger)  # logs with explicit steps from 0: before anything else
        traj = trajectories(sel["report"])
        for name, values in traj.items():
            logger.log_trajectory(values, name="poo" if name == "all" else f"poo_{name.replace(' ', '')}")
        metrics = dict(run_evaluate(cfg, p, trained))
        if cfg.get("proxy_check", True):
            metrics.update(run_proxy(cfg, p, sel, trained, metrics))
        scalars = {k.lower(): float(metrics[k]) for k in metrics if _is_scalar_metric(k)}
        # budget = the samples actually fine-tuned on (the whole pool when it is smaller than the request), so
        # tables and budget sweeps group and plot at the size that was used; budget_requested = selector.budget
        result = {"dataset": cfg.dataset.name, "task": cfg.task.name, "selector": cfg.selector.name,
                  "budget": int(len(sel["indices"])), "budget_requested": int(cfg.selector.budget),
                  "lam": cfg.selector.get("lam"), "seed": int(cfg.seed),
                  "n_train_pool": len(p["train"]), "n_test": len(p["test"]), **scalars,
                  "select_seconds": sel["report"].get("select_seconds"),
                  # what each stage cost when it was built (a job that found a stage cached took less itself)
                  "stage_seconds": {"select": sel["report"].get("select_seconds"),
                                    "train_wall": trained["report"].get("wall_s"),
                                    "train_cpu": trained["report"].get("cpu_s"),
                                    "evaluate_wall": metrics.get("eval_seconds"),
                                    "evaluate_cpu": metrics.get("eval_cpu_seconds"),
                                    "proxy_wall": metrics.get("proxy_seconds")},
                  "train_cached": bool(trained["report"].get("cached", False)),
                  "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                  "train_report": {k: v for k, v in trained["report"].items() if not isinstance(v, (list, dict))},
                  "selection_report": {k: v for k, v in sel["report"].items() if not isinstance(v, (list, dict))},
                  "poo_trajectories": traj,
                  "coreset": str(sel["path"] / "indices.npy"), "config": as_dict(cfg)}
        from goracs.report.dashboard import summary_metrics
        logger.log_metrics(summary_metrics(scalars), summary=True)  # test/<metric>, proxy/<value> for every task
        logger.log_table("result", _one_row(result))
        # the per-test-sample outputs, for intervals and paired differences between selectors (goracs.report)
        write_json(out_dir / "predictions.json", predictions(cfg.task.name, metrics, p["test"]))
        write_json(done, result)
    return result


def predictions(task: str, metrics: dict[str, Any], test) -> dict[str, Any]:
    """Per test sample: CTR P(Yes) and the label, SeqRec the target's 0-based rank; with the test samples' ids
    (their row index) so that two runs are compared on the same samples."""
    per = metrics.get("per_sample") or {}
    ids = per.get("ids") or [str(i) for i in test.index]  # SeqRec's eval.max_samples evaluates a subsample
    out = ({"task": task, "ids": ids, "p_yes": metrics.get("p_yes"), "labels": metrics.get("labels")} if task == "ctr"
           else {"task": task, "ids": ids, "rank": per.get("rank")})
    values = out.get("p_yes") if task == "ctr" else out.get("rank")
    if values is not None and len(values) != len(ids):
        raise ValueError(f"{task} predictions: {len(values)} values for {len(ids)} test ids (eval.max_samples "
                         "evaluated a subsample whose ids the evaluation did not return)")
    return out


def _is_scalar_metric(key: str) -> bool:
    """A metric or proxy value to record as a number (hr@k, ndcg@k at any cut-off, auc, logloss, accuracy...)."""
    from goracs.evaluate.metrics import METRICS

    return key.lower() in PROXY or key.split("@", 1)[0].lower() in METRICS


def _one_row(result: dict[str, Any]):
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in result.items() if not isinstance(v, (list, dict))}])
