"""The two tasks and the checks of a split's sample frame (shared by training, signals and evaluation)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from goracs.errors import DataError

TASKS = ("seqrec", "ctr")
CTR_ANSWERS = {"Yes.": 1, "No.": 0, "Yes": 1, "No": 0}  # the default prompts' answers, then the paper's


def check_task(task: str) -> str:
    """Validate a task name."""
    if task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {task!r}")
    return task


def check_samples(df, task: str, name: str = "samples", require: Sequence[str] = ()) -> None:
    """Fail clearly on an empty split, missing columns, non-text fields or (CTR) answers other than Yes./No."""
    import pandas as pd

    check_task(task)
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise DataError(f"{name}: no samples (an empty split or an empty coreset)")
    cols = ["instruction", "input", "output", *require]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; present: {list(df.columns)}")
    for c in ("instruction", "input", "output"):
        bad = [i for i, v in zip(df.index, df[c]) if not isinstance(v, str)]
        if bad:
            raise DataError(f"{name}: column {c!r} is not text for sample(s) {bad[:5]} (index labels)")
    if task == "ctr":
        bad = [i for i, v in zip(df.index, df["output"]) if v.strip() not in CTR_ANSWERS]
        if bad:
            raise DataError(f"{name}: CTR output must be 'Yes.' or 'No.' (paper prompts: 'Yes' or 'No'); "
                            f"sample(s) {bad[:5]} have {[df.loc[i, 'output'] for i in bad[:3]]}")
    if "label" in df.columns and task == "ctr":
        lab = df["label"].to_numpy()
        if not np.isin(lab, (0, 1)).all():
            raise DataError(f"{name}: label must be 0/1")
        ans = np.array([CTR_ANSWERS[v.strip()] for v in df["output"]])
        bad = df.index[ans != lab].tolist()
        if bad:
            raise DataError(f"{name}: output disagrees with label for sample(s) {bad[:5]}")


def select_coreset(df, indices, name: str = "coreset"):
    """The rows of a split named by a coreset's integer positions; fails on an empty or mismatched coreset."""
    idx = np.asarray(indices)
    if idx.size == 0:
        raise DataError(f"{name}: empty coreset (no indices)")
    if not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{name}: indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= len(df):
        raise DataError(f"{name}: indices range {idx.min()}..{idx.max()} does not fit the {len(df)} training "
                        "samples: the coreset was selected on another dataset")
    if len(np.unique(idx)) != idx.size:
        raise DataError(f"{name}: duplicate indices")
    return df.iloc[idx]
