"""Shared pieces of training and evaluation: config access, sample checks, encoding, forward passes, sharding."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

TASKS = ("seqrec", "ctr")
CTR_ANSWERS = {"Yes.": 1, "No.": 0, "Yes": 1, "No": 0}  # the default prompts' answers, then the paper's


class DataError(ValueError):
    """Samples, catalogues or coresets that cannot be used, named in the message."""


def to_dict(cfg: Any) -> dict:
    """A plain dict from a dict, a DictConfig or None (interpolations resolved)."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return {k: (to_dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    raise TypeError(f"config must be a mapping, got {type(cfg).__name__}")


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


def encode_prompt_answer(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer as they appear in prompt+answer (BPE-merge safe)."""
    p = tokenizer(prompt).input_ids
    if not answer:
        return list(p), []
    full = tokenizer(prompt + answer).input_ids
    if full[: len(p)] == p and len(full) > len(p):
        return list(p), list(full[len(p):])
    # the tokenizer merged across the boundary: encode the answer on its own
    return list(p), list(tokenizer(answer, add_special_tokens=False).input_ids)


def answer_ids_in_context(tokenizer, prompt: str, words: Sequence[str] = ("Yes", "No")) -> list[list[int]]:
    """Token ids of each answer word as it follows `prompt` (never encoded without context: a SentencePiece
    tokenizer gives a word at the start of a text another id than after a newline)."""
    out = []
    for w in words:
        _, ids = encode_prompt_answer(tokenizer, prompt, w)
        if not ids:
            raise DataError(f"the tokenizer encodes the answer {w!r} to no token")
        out.append(ids)
    return out


def truncate(ids: list[int], cutoff_len: int, side: str = "left") -> list[int]:
    """Keep at most cutoff_len ids: the last ones (left truncation) or the first ones (right)."""
    if cutoff_len is None or len(ids) <= cutoff_len:
        return ids
    return ids[-cutoff_len:] if side == "left" else ids[:cutoff_len]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left and right padding give the same outputs."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str, label_seqs=None):
    """Pad id lists into (input_ids, attention_mask[, labels]) tensors on the given side."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long) if label_seqs is not None else None
    for i, s in enumerate(seqs):
        sl = slice(n - len(s), n) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
        if labels is not None:
            labels[i, sl] = torch.tensor(label_seqs[i], dtype=torch.long)
    return (ids, mask, labels) if labels is not None else (ids, mask)


def lm_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw):
    """Causal-LM forward with positions derived from the attention mask."""
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids(attention_mask), use_cache=False, **kw)


def model_device(model) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device


def resolve_device(device: str | None) -> torch.device:
    """'auto' -> cuda when present, else cpu; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(n: int | None) -> None:
    """Limit torch's CPU threads (the machines are shared)."""
    if n:
        torch.set_num_threads(int(n))


def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def sharded_map(fn: Callable[[list[int]], list], n: int) -> list:
    """Run fn on this process's share of range(n) and gather the results in order on every process."""
    rank, world = dist_info()
    if world == 1:
        return list(fn(list(range(n))))
    mine = list(range(rank, n, world))
    part = list(fn(mine)) if mine else []
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, list(zip(mine, part)))
    out: list = [None] * n
    for p in parts:
        for i, v in p:
            out[i] = v
    return out


def env_flag(name: str) -> bool:
    """True when an environment variable is set to a truthy value."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
