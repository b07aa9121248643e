"""The `stats` and `demo` stages: dataset statistics as a table, and the main job on the embedded default
(every task x selector of the demo, one printed table)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from goracs.io import write_json, write_text
from goracs.pipeline import run_all, run_prepare

log = logging.getLogger(__name__)

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
    from goracs.evaluate.metrics import task_metrics

    out = []
    for r in rows:
        metrics = [m.name for m in task_metrics(r["task"], (r.get("config") or {}).get("eval"))]
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
