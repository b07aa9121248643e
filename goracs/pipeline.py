"""Stage functions: each reads explicit inputs, writes an artifact through the stage cache, returns it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from goracs.cache import StageCache
from goracs.data.prepare import PreparedData, prepare
from goracs.io import write_json, write_text

log = logging.getLogger(__name__)


def as_dict(node) -> dict[str, Any]:
    """A resolved plain-dict copy of a config node."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def stage_cache(cfg: DictConfig) -> StageCache:
    """The project-wide stage cache."""
    return StageCache(cfg.paths.cache_dir)


def run_prepare(cfg: DictConfig, task: str | None = None) -> PreparedData:
    """Prepare (or load) the samples of the configured dataset for one task."""
    task_cfg = as_dict(cfg.task)
    if task is not None and task != task_cfg["name"]:
        task_cfg = {**task_cfg, "name": task}
    return prepare(as_dict(cfg.dataset), task_cfg, stage_cache(cfg), seed=int(cfg.seed),
                   progress=bool(cfg.progress))


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
