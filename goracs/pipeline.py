"""Stage functions: each reads explicit inputs, writes an artifact through the stage cache, returns it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from goracs.cache import StageCache
from goracs.data.prepare import PreparedData, prepare
from goracs.evaluate.common import resolve_device
from goracs.evaluate.common import to_dict as as_dict
from goracs.io import save_npy, write_json, write_text

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


def stats_rows(cfg: DictConfig) -> list[dict[str, Any]]:
    """Users, items, interactions and samples per split for every task listed in `stats.tasks`."""
    rows = []
    for task in cfg.stats.tasks:
        data = run_prepare(cfg, task)
        read = data.stats["read"]
        rows.append({"dataset": cfg.dataset.name, "task": task, "users": read["users"], "items": read["items"],
                     "interactions": read["interactions"], "catalogue": len(data.catalogue),
                     "train": len(data.train), "valid": len(data.valid), "test": len(data.test),
                     "split": data.stats["split"]["method"],
                     "positive_share_train": data.stats["positive_share"]["train"] if task == "ctr" else None})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-markdown table of uniform dict rows."""
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_stats(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """The `stats` stage: print and save the dataset statistics table."""
    rows = stats_rows(cfg)
    table = markdown_table(rows)
    print(table)
    write_text(out_dir / "data_stats.md", table)
    write_json(out_dir / "data_stats.json", rows)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# signals -> selection -> fine-tuning -> evaluation, each cached by the hash of what determines it

_MODELS: dict[str, Any] = {}


def pool(cfg: DictConfig, data: PreparedData) -> dict[str, Any]:
    """The samples the run works on: the prepared splits, optionally capped (seeded) by `task.pool`."""
    caps = as_dict(cfg.task.get("pool") or {})
    out = {"key": {"prepare": data.path.name, "pool": caps}}
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


def base_model(cfg: DictConfig, fresh: bool = False):
    """(model, tokenizer) of the configured LLM; `fresh` returns an unwrapped copy for training."""
    from goracs.models import load_model

    m = cfg.model
    key = f"{m.name}:{m.get('path')}:{m.get('dtype')}"
    if fresh or key not in _MODELS:
        model, tok = load_model(m.name, path=m.get("path"), dtype=m.get("dtype", "float32"),
                                load_in_8bit=bool(m.get("load_in_8bit", False)), device=_device(cfg),
                                seed=int(cfg.seed))
        if fresh:
            return model, tok
        _MODELS.clear()  # one resident model at a time
        _MODELS[key] = (model, tok)
    return _MODELS[key]


def _device(cfg: DictConfig) -> str:
    return str(resolve_device(cfg.get("device", "cpu")))


def model_key(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the LLM for caching (with the content of the initial adapter, when one is set)."""
    from goracs.io import file_fingerprint
    from goracs.models import adapter_fingerprint

    m = as_dict(cfg.model)
    if m.get("path"):
        cfg_file = Path(m["path"]) / "config.json"
        if cfg_file.exists():
            m["fingerprint"] = file_fingerprint(cfg_file)
    if m.get("init_adapter"):
        m["init_adapter_fingerprint"] = adapter_fingerprint(m["init_adapter"])
    return m


def init_adapter(cfg: DictConfig) -> str | None:
    """The starting LoRA adapter folder (model.init_adapter) shared by the gradient, EL2N and fine-tuning stages;
    warns when its LoRA settings differ from model.lora (the adapter's own settings are the ones used)."""
    path = cfg.model.get("init_adapter")
    if not path:
        return None
    from goracs.models import ModelError

    cfg_file = Path(path) / "adapter_config.json"
    if not cfg_file.exists():
        raise ModelError(f"initial adapter folder {path} (model.init_adapter) has no adapter_config.json"
                         if Path(path).is_dir() else f"initial adapter folder does not exist: {path} "
                         "(model.init_adapter)")
    a = json.loads(cfg_file.read_text())
    lora = as_dict(cfg.model.get("lora") or {})
    theirs = {"r": a.get("r"), "alpha": a.get("lora_alpha"), "target_modules": sorted(a.get("target_modules") or [])}
    ours = {"r": lora.get("r"), "alpha": lora.get("alpha"), "target_modules": sorted(lora.get("target_modules") or [])}
    if theirs != ours:
        log.warning("model.init_adapter %s has LoRA settings %s, model.lora says %s: the adapter's are used",
                    path, theirs, ours)
    return str(path)


def adapted_model(cfg: DictConfig):
    """A fresh (model, tokenizer) for the gradient norms and EL2N: the base LLM with the initial adapter loaded
    (frozen) when model.init_adapter is set, else the plain base model (a fresh LoRA is added by the stage)."""
    model, tok = base_model(cfg, fresh=True)
    path = init_adapter(cfg)
    if path is not None:
        from goracs.models import load_adapter

        model = load_adapter(model, path, trainable=False)
    return model, tok


def compute_embeddings(cfg: DictConfig, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Sentence embeddings of the train and validation texts (method.md 4), cached by encoder and texts."""
    from goracs.signals.embed import embed_samples

    s = cfg.signals
    task = cfg.task.name
    # texts too long for the encoder lose their oldest history titles (catalogue titles); counts in stats.json
    titles = dict(zip(p["catalogue"]["item_id"].astype(str), p["catalogue"]["title"].astype(str)))
    kw = dict(encoder=s.encoder, batch_size=int(s.embed_batch_size), cache_dir=Path(cfg.paths.cache_dir) / "embed",
              device=_device(cfg), normalize=bool(s.get("normalize_embeddings", False)),
              progress=bool(cfg.progress), titles=titles)
    return (embed_samples(p["train"], task, **kw)[0], embed_samples(p["valid"], task, **kw)[0])


def compute_grad_norms(cfg: DictConfig, p: dict[str, Any]) -> np.ndarray:
    """Per-sample LoRA-B gradient norms of the train pool, cached and resumable in shards."""
    from goracs.signals.grads import grad_norms

    s = cfg.signals
    key = {"pool": p["key"], "task": cfg.task.name, "model": model_key(cfg), "layer": int(s.grad_layer),
           "max_len": int(s.max_len), "lora_seed": int(s.lora_seed), "lora": as_dict(cfg.model.lora)}
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
    key = {"pool": p["key"], "task": cfg.task.name, "model": model_key(cfg), "max_len": int(s.max_len),
           "warmup_epochs": warm, "warmup_samples": int(s.el2n_warmup_samples), "seed": int(s.el2n_warmup_seed),
           "train": as_dict(cfg.train) if warm else None}
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
        tcfg = {**as_dict(cfg.train), "epochs": warm}
        model, _ = train_lora(model, tok, sub, p["valid"], cfg.task.name, tcfg,
                              cache.path("el2n", key).with_name(cache.path("el2n", key).name + ".warmup"),
                              init_adapter=init_adapter(cfg))
    scores = el2n_scores(model, tok, p["train"], cfg.task.name, batch_size=int(s.el2n_batch_size),
                         max_len=int(s.max_len), progress=bool(cfg.progress))
    with cache.build("el2n", key) as tmp:
        save_npy(tmp / "el2n.npy", np.asarray(scores, dtype=np.float32))


def selector_params(cfg: DictConfig) -> tuple[str, int, dict[str, Any]]:
    """(name, budget, constructor parameters) of the configured selector."""
    params = as_dict(cfg.selector)
    name = params.pop("name")
    budget = int(params.pop("budget"))
    return name, budget, params


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


def run_select(cfg: DictConfig, p: dict[str, Any]) -> dict[str, Any]:
    """Select the coreset with the configured selector; cached by signals, selector settings, budget and seed."""
    from goracs.selection.base import make_selector

    name, budget, params = selector_params(cfg)
    selector = make_selector(name, **params)
    needs = tuple(getattr(selector, "needs", ())) + tuple(getattr(selector, "extra_needs", ()))
    key = {"pool": p["key"], "task": cfg.task.name, "selector": name, "params": params, "budget": budget,
           "seed": int(cfg.seed), "needs": sorted(needs),
           "signals": {"encoder": cfg.signals.encoder, "model": model_key(cfg) if
                       {"grad_norms", "el2n"} & set(needs) else None,
                       "grad": [int(cfg.signals.grad_layer), int(cfg.signals.max_len), int(cfg.signals.lora_seed)],
                       "el2n": [int(cfg.signals.el2n_warmup_epochs), int(cfg.signals.el2n_warmup_samples)]}}
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
    return {"key": key, "path": path, "indices": np.load(path / "indices.npy"),
            "report": json.loads((path / "report.json").read_text())}


def run_train(cfg: DictConfig, p: dict[str, Any], sel: dict[str, Any], logger=None) -> dict[str, Any]:
    """LoRA fine-tuning on the coreset; the adapter is cached by the selection, model and training settings."""
    from goracs.train import train_lora

    # the run's seed seeds fine-tuning too, so seeds vary the whole pipeline, not only the selection
    tcfg = {**as_dict(cfg.train), "seed": int(cfg.seed)}
    key = {"select": sel["path"].name, "model": model_key(cfg), "train": tcfg}
    cache = stage_cache(cfg)
    out = cache.path("train", key)
    with cache.lock("train", key):  # a second job on the same coreset and settings waits for the first
        if cache.done("train", key):
            # loaded only if a later stage needs the model (an evaluation already cached does not)
            report = {**json.loads((out / "train_report.json").read_text()), "cached": True}
            return {"key": key, "path": out, "model": None, "tokenizer": None, "report": report}
        model, tok = base_model(cfg, fresh=True)
        coreset = p["train"].iloc[sel["indices"]].reset_index(drop=True)
        # trained in the stage's temporary folder and renamed into place complete (a killed run leaves nothing)
        with cache.build("train", key) as tmp:
            model, report = train_lora(model, tok, coreset, p["valid"], cfg.task.name, tcfg, tmp, logger=logger,
                                       init_adapter=init_adapter(cfg))
            report["adapter_dir"] = str(out / "adapter")
            write_json(tmp / "train_report.json", report)
    return {"key": key, "path": out, "model": model, "tokenizer": tok, "report": report}


def run_evaluate(cfg: DictConfig, p: dict[str, Any], trained: dict[str, Any],
                 sel: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the fine-tuned model on the test split (plus the proxy-check values when `sel` is given);
    cached by the adapter and the evaluation settings."""
    key = {"train": trained["path"].name, "eval": as_dict(cfg.eval), "task": cfg.task.name,
           "test": p["key"], "proxy": sel is not None}
    cache = stage_cache(cfg)
    with cache.lock("evaluate", key):
        if not cache.done("evaluate", key):
            if trained["model"] is None:
                from peft import PeftModel

                base, tok = base_model(cfg, fresh=True)
                trained["model"] = PeftModel.from_pretrained(base, str(trained["path"] / "adapter"),
                                                             is_trainable=False)
                trained["tokenizer"] = tok
            model, tok = trained["model"], trained["tokenizer"]
            model.eval()
            if cfg.task.name == "ctr":
                from goracs.evaluate.ctr import evaluate_ctr

                metrics = evaluate_ctr(model, tok, p["test"], as_dict(cfg.eval))
            else:
                from goracs.evaluate.seqrec import evaluate_seqrec

                base, _ = base_model(cfg)
                metrics = evaluate_seqrec(model, base, tok, p["test"], p["catalogue"], as_dict(cfg.eval),
                                          cache_dir=Path(cfg.paths.cache_dir) / "catalogue")
            if sel is not None:
                metrics.update(proxy_values(cfg, p, sel, trained))
            with cache.build("evaluate", key) as tmp:
                write_json(tmp / "metrics.json", metrics)
    return json.loads((cache.path("evaluate", key) / "metrics.json").read_text())


SCALAR_METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "auc", "logloss", "accuracy")
PROXY = ("poo", "poo_lam", "test_loss")


def trajectories(report: dict[str, Any]) -> dict[str, list[float]]:
    """POO after each accepted exchange: one trajectory, or one per class for label-enhanced ITRA."""
    if report.get("poo_trajectory"):
        return {"all": list(report["poo_trajectory"])}
    return {f"class {c}": list(r["poo_trajectory"]) for c, r in (report.get("per_class") or {}).items()
            if r.get("poo_trajectory")}


def run_logger(cfg: DictConfig, out_dir: Path, job_type: str):
    """The configured W&B (or no-op) logger for one run, writing under the run's folder."""
    from goracs.report.wandb import make_logger

    over: dict[str, Any] = {"dir": str(out_dir)}
    if cfg.logger.get("backend", "none") != "none":
        over["group"] = cfg.logger.get("group") or f"{cfg.dataset.name}-{cfg.task.name}"
        over["job_type"] = cfg.logger.get("job_type") or job_type
        over["name"] = cfg.logger.get("name") or \
            f"{cfg.dataset.name}-{cfg.task.name}-{cfg.selector.name}-n{cfg.selector.budget}-s{cfg.seed}"
        over["tags"] = list(cfg.logger.get("tags") or []) + [cfg.dataset.name, cfg.task.name, cfg.selector.name]
    out_dir.mkdir(parents=True, exist_ok=True)
    return make_logger(cfg.logger, as_dict(cfg), **over)


def proxy_values(cfg: DictConfig, p: dict[str, Any], sel: dict[str, Any], trained: dict[str, Any]) -> dict:
    """POO of the coreset (at the task's lambda) and the fine-tuned model's mean test loss: the proxy check."""
    from goracs.selection.cost import compute_cost
    from goracs.selection.ot import poo
    from goracs.train import sequence_loss

    emb, val = compute_embeddings(cfg, p)
    # the task's lambda for every run, so that the POO of every selector's coreset is on one scale (a selector's
    # own `lam`, e.g. DEALRec's effort weight or a lambda sweep's value, is another quantity)
    lam = float(cfg.task.get("lam", 0.0))
    C = compute_cost(emb, val, compute_grad_norms(cfg, p), lam, device="cpu")
    value = poo(C[sel["indices"]])[0]
    from goracs.train import train_config

    tc = train_config(as_dict(cfg.train), cfg.task.name)
    losses = sequence_loss(trained["model"], trained["tokenizer"], p["test"], cfg.task.name,
                           cutoff_len=int(tc["cutoff_len"]), batch_size=int(tc["eval_batch_size"]),
                           truncation=tc["truncation"], add_eos=bool(tc["add_eos"]), ctr_loss=tc["ctr_loss"])
    return {"poo": float(value), "poo_lam": lam, "test_loss": float(np.mean(losses))}


def run_all(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """prepare -> signals -> select -> train -> evaluate for one dataset, task, selector and seed."""
    out_dir = Path(out_dir)
    if cfg.selector.name in (cfg.get("seqrec_only_selectors") or []) and cfg.task.name != "seqrec":
        log.warning("%s is a SeqRec-only selector: %s skipped", cfg.selector.name, cfg.task.name)
        return {}
    done = out_dir / "metrics.json"
    if done.exists() and cfg.get("skip_finished", True):
        prev = json.loads(done.read_text())
        if prev.get("config") == as_dict(cfg):
            log.info("%s already finished with this config: skipped", out_dir)
            return prev
    t0 = time.perf_counter()
    data = run_prepare(cfg)
    p = pool(cfg, data)
    with run_logger(cfg, out_dir, "pipeline") as logger:
        sel = run_select(cfg, p)
        logger.log_coreset(sel["indices"])
        trained = run_train(cfg, p, sel, logger=logger)  # logs with explicit steps from 0: before anything else
        traj = trajectories(sel["report"])
        for name, values in traj.items():
            logger.log_trajectory(values, name="poo" if name == "all" else f"poo_{name.replace(' ', '')}")
        metrics = run_evaluate(cfg, p, trained, sel if cfg.get("proxy_check", True) else None)
        scalars = {k.lower(): float(metrics[k]) for k in metrics if k.lower() in SCALAR_METRICS + PROXY}
        # budget = the samples actually fine-tuned on (the whole pool when it is smaller than the request), so
        # tables and budget sweeps group and plot at the size that was used; budget_requested = selector.budget
        result = {"dataset": cfg.dataset.name, "task": cfg.task.name, "selector": cfg.selector.name,
                  "budget": int(len(sel["indices"])), "budget_requested": int(cfg.selector.budget),
                  "lam": cfg.selector.get("lam"), "seed": int(cfg.seed),
                  "n_train_pool": len(p["train"]), "n_test": len(p["test"]), **scalars,
                  "select_seconds": sel["report"].get("select_seconds"),
                  "wall_seconds": time.perf_counter() - t0,
                  "train_report": {k: v for k, v in trained["report"].items() if not isinstance(v, (list, dict))},
                  "selection_report": {k: v for k, v in sel["report"].items() if not isinstance(v, (list, dict))},
                  "poo_trajectories": traj,
                  "coreset": str(sel["path"] / "indices.npy"), "config": as_dict(cfg)}
        logger.log_metrics(scalars, summary=True)
        logger.log_table("result", _one_row(result))
        write_json(done, result)
    return result


def _one_row(result: dict[str, Any]):
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in result.items() if not isinstance(v, (list, dict))}])


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def with_task_selector(cfg: DictConfig, task: str, selector: str) -> DictConfig:
    """A copy of cfg running `task` with `selector` (group files loaded from configs/); task settings that the
    run changed from its own task file (by a profile or on the command line) carry over to the new task."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    own = OmegaConf.load(CONFIG_DIR / "task" / f"{cfg.task.name}.yaml")
    task_cfg = OmegaConf.load(CONFIG_DIR / "task" / f"{task}.yaml")
    for k in cfg.task:
        if k != "name" and (k not in own or cfg.task[k] != own[k]):
            task_cfg[k] = cfg.task[k]
    sub.task = task_cfg
    path = CONFIG_DIR / "selector" / f"{selector}.yaml"
    if not path.exists():
        raise ValueError(f"unknown selector '{selector}': no {path}")
    sub.selector = OmegaConf.load(path)
    return sub


def result_table(rows: list[dict[str, Any]]) -> str:
    """The demo's printed table: one row per task and selector."""
    out = []
    for r in rows:
        metrics = ["hr@5", "hr@10", "ndcg@5", "ndcg@10"] if r["task"] == "seqrec" else ["auc", "logloss"]
        out.append({"task": r["task"], "selector": r["selector"], "budget": r["budget"],
                    "metrics": ", ".join(f"{m.upper()} {r[m]:.4f}" for m in metrics if r.get(m) is not None),
                    "select s": round(r.get("select_seconds") or 0.0, 2),
                    "run s": round(r["wall_seconds"], 1)})
    return markdown_table(out)


def run_demo(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """The main job on the embedded default: every task x selector of the demo, then one table."""
    names = list(cfg.demo.full_selectors if int(cfg.demo.full) else cfg.demo.selectors)
    rows = []
    t0 = time.perf_counter()
    for task in cfg.demo.tasks:
        for name in names:
            if name in (cfg.get("seqrec_only_selectors") or []) and task != "seqrec":
                continue
            sub = with_task_selector(cfg, task, name)
            log.info("demo: %s with %s", task, name)
            rows.append(run_all(sub, out_dir / f"{task}_{name}"))
    rows = [r for r in rows if r]  # skipped jobs (a SeqRec-only selector on CTR) return {}
    table = result_table(rows)
    first = rows[0] if rows else {}
    total = time.perf_counter() - t0
    text = (f"# Demo results (synthetic default, SmolLM2-135M, {'all selectors' if int(cfg.demo.full) else 'GORACS and random'})\n\n"
            f"Command: `make demo{' FULL=1' if int(cfg.demo.full) else ''}`; total {total / 60:.1f} min "
            f"(jobs already in the stage cache cost nothing).\n\n{table}\n"
            f"{first.get('n_train_pool', 0)} training samples in the pool, {first.get('n_test', 0)} test samples, "
            f"one seed: the demo checks the whole harness "
            f"end to end; differences of a few points are within noise at this size (the results tables average "
            f"seeds).\n")
    print("\n" + text)
    res_dir = Path(cfg.demo.out_dir)
    write_text(res_dir / f"table{'_full' if int(cfg.demo.full) else ''}.md", text)
    write_json(res_dir / f"results{'_full' if int(cfg.demo.full) else ''}.json", rows)
    write_text(out_dir / "table.md", text)
    return rows


def run_aggregate(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Tables from the profile's table runs and figures from its sweeps, into results/ (and W&B)."""
    from goracs.report import plots
    from goracs.report.aggregate import METRICS, collect, write_tables

    prof = cfg.aggregate.profile
    root = Path(cfg.paths.output_dir)
    res = Path(cfg.paths.results_dir)
    tables = write_tables([root / f"table_{prof}"], res)
    figs = res / "figures"
    made = []
    sweeps = collect([root / f"sweep_{prof}"]) if (root / f"sweep_{prof}").exists() else None
    main_metric = {"seqrec": "ndcg@10", "ctr": "auc"}
    if sweeps is not None and not sweeps.empty:
        for task, part in sweeps.groupby("task"):
            m = main_metric[task]
            lam_runs = part[(part["selector"] == "goracs") & part["lam"].notna()]
            if lam_runs["lam"].nunique() > 1:
                b = lam_runs["budget"].mode().iloc[0]
                made.append(plots.metric_vs(lam_runs[lam_runs["budget"] == b], "lam", m,
                                            figs / f"{task}_{m}_vs_lambda.png",
                                            f"{task}: {m.upper()} against lambda (n = {b})"))
            if part["budget"].nunique() > 1:
                lam_default = cfg.aggregate.get("lam", {}).get(task)
                keep = part[(part["selector"] != "goracs") | (part["lam"].astype(float) == float(lam_default))] \
                    if lam_default is not None else part
                made.append(plots.metric_vs(keep, "budget", m, figs / f"{task}_{m}_vs_budget.png",
                                            f"{task}: {m.upper()} against budget"))
    runs = collect([root / f"table_{prof}", root / f"sweep_{prof}"])
    if not runs.empty and "poo" in runs and "test_loss" in runs:
        for task, part in runs.dropna(subset=["poo", "test_loss"]).groupby("task"):
            b = part["budget"].mode().iloc[0]
            part = part[part["budget"] == b]
            if len(part) > 2:
                kinds = ["random" if s == "random" else ("GORACS" if s == "goracs" else "other selectors")
                         for s in part["selector"]]
                made.append(plots.proxy_check(part["poo"].to_numpy(float), part["test_loss"].to_numpy(float),
                                              kinds, figs / f"{task}_proxy_check.png"))
    traj = {}
    for path in sorted((root / f"table_{prof}").rglob("metrics.json")):
        m = json.loads(path.read_text())
        if m.get("poo_trajectories") and m.get("seed", 0) == 0:
            for name, values in m["poo_trajectories"].items():
                label = f"{m['dataset']}/{m['task']} n={m['budget']}" + ("" if name == "all" else f" {name}")
                traj[label] = values
    if traj:
        made.append(plots.poo_descent(traj, figs / "poo_descent.png"))
    print("\n".join(f"wrote {p}" for p in made))
    if cfg.get("logger") is not None and cfg.logger.get("backend", "none") != "none":
        from goracs.report.wandb import make_logger

        with make_logger(cfg.logger, as_dict(cfg), dir=str(out_dir), job_type="aggregate",
                         group=f"table-{prof}") as logger:
            for task, df in tables.items():
                if not df.empty:
                    logger.log_table(f"table_{task}", df)
    return {"tables": {k: len(v) for k, v in tables.items()}, "figures": [str(p) for p in made],
            "metrics": METRICS}
