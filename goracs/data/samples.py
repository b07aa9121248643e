"""Sample builders (method.md 5): history windows -> SeqRec (next title) and CTR (Yes/No, rating > 3) samples."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from tqdm import tqdm

from goracs import prompts
from goracs.tasks import TASKS

log = logging.getLogger(__name__)


def normalise_interactions(inter: pd.DataFrame) -> pd.DataFrame:
    """Sort interactions by user (first appearance), then time, then file order; returns a fresh frame."""
    df = inter.copy()
    if "order" not in df:
        df["order"] = np.arange(len(df), dtype=np.int64)
    if "timestamp" not in df:
        df["timestamp"] = np.nan
    df["_u"] = pd.factorize(df["user"], sort=False)[0]
    # stable sort: ties in time keep the order of the file, as the authors' stable `sorted` does
    df = df.sort_values(["_u", "timestamp", "order"], kind="stable", na_position="last")
    return df.drop(columns="_u").reset_index(drop=True)


def dedupe_interactions(inter: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the earliest review of each (user, item) pair; returns the frame and the number removed."""
    df = inter.sort_values(["timestamp", "order"] if "order" in inter else ["timestamp"], kind="stable")
    keep = ~df.duplicated(["user", "item"], keep="first")
    removed = int((~keep).sum())
    if removed:
        log.warning("removed %d duplicate (user, item) reviews, keeping the earliest of each", removed)
    return inter.loc[keep.reindex(inter.index).to_numpy()], removed


def build_samples(inter: pd.DataFrame, titles: dict[str, str], task: str, max_history: int = 10,
                  min_history: int = 1, progress: bool = True,
                  template: prompts.PromptTemplate | None = None) -> tuple[pd.DataFrame, dict]:
    """Build one sample per target position: for each user, positions min(h, len-1) .. len-1 are targets, with the
    up to h previous items as history (h = max_history). Interactions must carry user, item, label, timestamp.
    `template` (the task's prompt template; None = the generic default) writes the instruction, input and output
    columns and is stored in the `prompt_template` column, from which every consumer renders the prompt."""
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; known: {list(TASKS)}")
    tpl = template if template is not None else prompts.DEFAULT_TEMPLATES[task]
    if tpl.task != task:
        raise ValueError(f"the prompt template '{tpl.set}' is for task {tpl.task}, not {task}")
    if max_history < 1 or min_history < 1 or min_history > max_history:
        raise ValueError(f"need 1 <= min_history ({min_history}) <= max_history ({max_history})")
    df = normalise_interactions(inter)
    if not len(df):
        raise ValueError("no interactions to build samples from")
    has_title = df["item"].astype(str).map(titles).notna().to_numpy()
    if not has_title.any():
        # said here, not as an IndexError in CTR or a split asking for timestamps in SeqRec
        raise ValueError(f"no item with interactions has a title: 0 of the {df['item'].nunique()} items (in "
                         f"{len(df)} interactions) are among the {len(titles)} titled items; check that the "
                         f"metadata's item ids match the interactions'")
    stats = {"dropped_untitled_interactions": int((~has_title).sum())}
    df = df.loc[has_title].reset_index(drop=True)

    users = df["user"].astype(str).to_numpy()
    items = df["item"].astype(str).to_numpy()
    labels = df["label"].to_numpy(dtype=np.float64) if "label" in df else np.full(len(df), np.nan)
    ratings = df["rating"].to_numpy(dtype=np.float64) if "rating" in df else np.full(len(df), np.nan)
    times = df["timestamp"].to_numpy(dtype=np.float64)
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])

    out = {k: [] for k in ("user", "history", "target", "rating", "label", "timestamp", "position")}
    short = unlabelled = 0
    for b in tqdm(range(len(bounds) - 1), desc=f"{task} samples", unit=" users", disable=not progress,
                  mininterval=2.0):
        s, e = bounds[b], bounds[b + 1]
        n = e - s
        for i in range(min(max_history, n - 1), n):
            lo = max(i - max_history, 0)
            if i - lo < min_history:
                short += 1
                continue
            lab = labels[s + lo:s + i + 1]
            if task == "ctr" and np.isnan(lab).any():
                unlabelled += 1
                continue
            out["user"].append(users[s])
            out["history"].append(items[s + lo:s + i].tolist())
            out["target"].append(items[s + i])
            out["rating"].append(ratings[s + i])
            out["label"].append(-1 if np.isnan(lab[-1]) else int(lab[-1]))
            out["timestamp"].append(times[s + i])
            out["position"].append(i)
    stats.update(short_history_skipped=short, unlabelled_skipped=unlabelled)
    samples = pd.DataFrame(out)
    samples["label"] = samples["label"].astype(np.int64)
    samples["position"] = samples["position"].astype(np.int64)
    samples["instruction"] = tpl.instruction
    if task == "ctr":
        hist_labels = _history_labels(df, samples)
        samples["input"] = [
            tpl.ctr_input([titles[h] for h, l in zip(hist, hl) if l == 1],
                          [titles[h] for h, l in zip(hist, hl) if l != 1], titles[t])
            for hist, hl, t in zip(samples["history"], hist_labels, samples["target"])]
        samples["output"] = [tpl.ctr_response(l) for l in samples["label"]]
        samples["history_labels"] = hist_labels
    else:
        samples["input"] = [tpl.seqrec_input([titles[h] for h in hist]) for hist in samples["history"]]
        samples["output"] = [tpl.seqrec_response(titles[t]) for t in samples["target"]]
    samples[prompts.TEMPLATE_COLUMN] = tpl.to_json()
    stats["samples"] = len(samples)
    return samples, stats


def _history_labels(df: pd.DataFrame, samples: pd.DataFrame) -> list[list[int]]:
    """Labels of each sample's history items, looked up by (user, position) in the sorted interactions."""
    users = df["user"].astype(str).to_numpy()
    labels = df["label"].to_numpy(dtype=np.float64)
    start = {}
    for k in np.flatnonzero(np.r_[True, users[1:] != users[:-1]]):
        start[users[k]] = k
    out = []
    for u, hist, pos in zip(samples["user"], samples["history"], samples["position"]):
        s = start[u] + pos
        out.append(labels[s - len(hist):s].astype(np.int64).tolist())
    return out
