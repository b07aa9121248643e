"""The prepare stage: dataset config + task config -> cached train/valid/test samples, negatives, catalogue."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from goracs.cache import StageCache
from goracs.data.datasets import cache_key, load_interactions
from goracs.data.samples import build_samples
from goracs.data.splits import sample_negatives, split_samples
from goracs.io import save_parquet, write_json
from goracs.prompts import PromptTemplate, resolve_template
from goracs.tasks import TASKS

log = logging.getLogger(__name__)

DATA_VERSION = 2  # bump when sample construction changes (the prompt text is part of the key: prepare_key)
# 2: the key holds only the task settings the samples are built from (data_settings) and the dataset's input files
#    by content, not where they lie (datasets.cache_key); version 1 keyed the whole task config and the folder path


@dataclass
class PreparedData:
    """The samples of one dataset and task, as loaded from the cache."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    catalogue: pd.DataFrame
    stats: dict[str, Any]
    path: Path

    def split(self, name: str) -> pd.DataFrame:
        """One split by name (train, valid, test)."""
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def task_template(dataset_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any],
                  prompt_cfg: Any = None) -> PromptTemplate:
    """The prompt template of this dataset and task in the prompt set `prompt_cfg` (None = the generic default)."""
    return resolve_template(prompt_cfg, str(dataset_cfg.get("name", "default")), task_cfg["name"])


def data_settings(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The task settings the samples are built from, defaults filled in: the task, the history length and, for
    SeqRec, the test negatives. The build reads these and nothing else of the task config, so its other settings
    (budget, lambda, ITRA, pool caps: a selector's or a run's business) leave the prepared samples and every
    signal computed on them alone."""
    task = task_cfg["name"]
    out: dict[str, Any] = {"name": task, "max_history": int(task_cfg.get("max_history", 10))}
    if task == "seqrec":
        out["n_negatives"] = int(task_cfg.get("n_negatives", 99))
    return out


def prepare_key(dataset_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any], seed: int,
                prompt_cfg: Any = None) -> dict[str, Any]:
    """Everything that determines the prepared samples, the prompt template's text included, and nothing else."""
    return {"version": DATA_VERSION, "dataset": cache_key(dataset_cfg), "task": data_settings(task_cfg),
            "seed": seed, "prompt": task_template(dataset_cfg, task_cfg, prompt_cfg).as_dict()}


def prepare(dataset_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any], cache: StageCache, seed: int = 0,
            progress: bool = True, prompt_cfg: Any = None) -> PreparedData:
    """Build (or load from cache) the samples of one dataset for one task, with the prompt set `prompt_cfg`
    (a `prompt` config; None = the generic default set)."""
    task = task_cfg["name"]
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; known: {list(TASKS)}")
    key = prepare_key(dataset_cfg, task_cfg, seed, prompt_cfg)
    with cache.lock("prepare", key):  # two processes that need the same samples build them once
        if not cache.done("prepare", key):
            with cache.build("prepare", key) as tmp:
                _build(dataset_cfg, key["task"], seed, tmp, progress, task_template(dataset_cfg, task_cfg, prompt_cfg))
    return load_prepared(cache.path("prepare", key))


def _build(dataset_cfg, settings: Mapping[str, Any], seed, out: Path, progress: bool,
           template: PromptTemplate) -> None:
    """Build the samples from the key's task part (`data_settings`): the build sees no other task setting."""
    task = settings["name"]
    inter, titles, stats = load_interactions(dataset_cfg, progress=progress)
    samples, sstats = build_samples(inter, titles, task, max_history=settings["max_history"],
                                    min_history=int(dataset_cfg.get("min_history", 1)), progress=progress,
                                    template=template)
    split_cfg = dataset_cfg.get("split", {}) or {}
    parts, pstats = split_samples(samples, method=split_cfg.get("method", "auto"),
                                  n_valid=split_cfg.get("n_valid", 5000), n_test=split_cfg.get("n_test", 5000),
                                  seed=seed)
    used_items = sorted(set(inter["item"]) & titles.keys())
    catalogue = pd.DataFrame({"item_id": used_items, "title": [titles[i] for i in used_items]})
    if task == "seqrec":
        user_items = inter.groupby("user", sort=False)["item"].agg(set).to_dict()
        parts["test"]["negatives"] = sample_negatives(parts["test"], user_items, catalogue["item_id"].to_numpy(),
                                                      n_neg=settings["n_negatives"], seed=seed)
    for name, df in parts.items():
        save_parquet(out / f"{name}.parquet", df)
    save_parquet(out / "catalogue.parquet", catalogue)
    labelled = {name: float((df["label"] == 1).mean()) if len(df) else None for name, df in parts.items()}
    write_json(out / "stats.json", {"dataset": dataset_cfg.get("name"), "task": task, "read": stats,
                                    "prompt": template.as_dict(), "samples": sstats, "split": pstats,
                                    "catalogue_items": len(catalogue), "positive_share": labelled})


def load_prepared(path: Path) -> PreparedData:
    """Load a prepared-samples folder."""
    frames = {n: pd.read_parquet(path / f"{n}.parquet") for n in ("train", "valid", "test", "catalogue")}
    for df in frames.values():
        for col in ("history", "negatives", "history_labels"):
            if col in df:
                df[col] = df[col].map(list)
    stats = json.loads((path / "stats.json").read_text())
    return PreparedData(frames["train"], frames["valid"], frames["test"], frames["catalogue"], stats, path)
