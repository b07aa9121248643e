"""Shared pieces of the LM-based signals: input checks, tokenisation with a cutoff, the decoder/head split."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from goracs.errors import DataError
from goracs.prompts import render_prompt, sample_prompts
from goracs.tasks import TASKS
from goracs.text import answer_token_ids, token_ids

log = logging.getLogger(__name__)

ANSWER_WORDS = ("Yes", "No")


class SignalError(ValueError):
    """Bad input to a signal computation; the message names the sample or the setting."""


def check_frame(df, task: str, need_output: bool = True, need_label: bool = False) -> None:
    """Check that a split has the columns a signal needs and that the task name is known."""
    if task not in TASKS:
        raise SignalError(f"unknown task '{task}' (expected one of {TASKS})")
    cols = ["instruction", "input"] + (["output"] if need_output else []) + (["label"] if need_label else [])
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SignalError(f"the {task} split lacks the column(s) {missing} (has {list(df.columns)})")
    if len(df) == 0:
        raise SignalError(f"the {task} split is empty")
    if need_label:
        lab = np.asarray(df["label"])
        bad = np.flatnonzero(~np.isin(lab, [0, 1]))
        if len(bad):
            raise SignalError(f"CTR labels must be 0 or 1; sample {bad[0]} has label {lab[bad[0]]}")


def yes_no_ids(tokenizer, prompt: str, words: tuple[str, str] = ANSWER_WORDS) -> tuple[int, int]:
    """The single token ids of "Yes" and "No" as they follow `prompt` (goracs.text.answer_token_ids, the ids that
    training and evaluation use; a SentencePiece tokenizer such as LLaMA's gives "Yes" after "### Response:\n"
    another id than "Yes" on its own); fails, naming the words, when either is not a single token there or both
    are the same token."""
    try:
        ids = answer_token_ids(tokenizer, prompt, words)
    except DataError as e:
        raise SignalError(str(e)) from e
    for w, t in zip(words, ids):
        if len(t) != 1:
            raise SignalError(f"the tokenizer splits the answer {w!r} into {len(t)} tokens {t} after the prompt; "
                              f"the CTR loss needs single-token answers {list(words)}")
    return int(ids[0][0]), int(ids[1][0])


def ctr_answer_ids(tokenizer, df, words: tuple[str, str] = ANSWER_WORDS) -> tuple[int, int]:
    """The in-context "Yes"/"No" ids for a CTR split (every prompt ends with the same response header, so the
    first sample's prompt decides)."""
    row = df.iloc[0]
    return yes_no_ids(tokenizer, render_prompt(str(row["instruction"]), str(row["input"]), df), words)


@dataclass
class Encoded:
    """Token ids per sample and where the response starts (SeqRec) or the answer position (CTR)."""

    ids: list[list[int]]
    n_prompt: list[int]  # number of prompt tokens kept (SeqRec: the response starts at this index)
    labels: np.ndarray | None
    n_truncated: int

    def digest(self) -> str:
        """Hash of everything that enters the model (token ids, prompt lengths, labels)."""
        h = hashlib.sha256()
        for ids, k in zip(self.ids, self.n_prompt):
            h.update(np.asarray([len(ids), k], dtype=np.int64).tobytes())
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
        if self.labels is not None:
            h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()


def encode(tokenizer, df, task: str, max_len: int) -> Encoded:
    """Tokenise each sample: SeqRec = prompt + output + eos (first max_len tokens kept); CTR = the prompt
    (last max_len tokens kept, so the answer position survives). Truncations are counted and logged."""
    check_frame(df, task, need_output=(task == "seqrec"), need_label=(task == "ctr"))
    if int(max_len) < 2:
        raise SignalError(f"max_len must be at least 2 tokens, got {max_len}")
    eos = tokenizer.eos_token_id
    if task == "seqrec" and eos is None:
        raise SignalError("the tokenizer has no eos token; the SeqRec training text ends with one")
    # the one tokenisation of training and evaluation; the SeqRec response encoded on its own (answer_in_context
    # False, as these signals and their caches always had it: the same ids for SmolLM2's byte-level BPE)
    outputs = df["output"].tolist() if task == "seqrec" else None
    p_ids, r_ids = token_ids(tokenizer, sample_prompts(df), outputs, answer_in_context=False)
    ids, n_prompt, first_cut, n_cut = [], [], None, 0
    if task == "seqrec":
        for k, (p, r) in enumerate(zip(p_ids, r_ids)):
            full = list(p) + list(r) + [eos]
            if len(full) > max_len:
                n_cut += 1
                first_cut = k if first_cut is None else first_cut
                full = full[:max_len]
            ids.append(full)
            n_prompt.append(min(len(p), len(full)))
        labels = None
    else:
        for k, p in enumerate(p_ids):
            p = list(p)
            if len(p) > max_len:
                n_cut += 1
                first_cut = k if first_cut is None else first_cut
                p = p[-max_len:]
            ids.append(p)
            n_prompt.append(len(p))
        labels = np.asarray(df["label"], dtype=np.int64)
    if n_cut:
        log.warning("%d of %d %s samples are longer than max_len=%d tokens and were truncated (first: sample %d)",
                    n_cut, len(ids), task, max_len, first_cut)
    return Encoded(ids, n_prompt, labels, n_cut)


def backbone(model):
    """(decoder, lm_head) of a causal LM, peft-wrapped or plain, so logits can be taken at chosen positions."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError) as e:
        raise SignalError(f"{type(base).__name__} is not a causal LM with a decoder and an output head") from e
    if decoder is None or head is None:
        raise SignalError(f"{type(base).__name__} is not a causal LM with a decoder and an output head")
    return decoder, head


def pad_id_of(tokenizer) -> int:
    """The padding id (eos when the tokenizer has no pad token); its value never matters (right padding)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pid) if pid is not None else 0


def length_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (less padding); the order inside a result never depends on it."""
    if int(batch_size) < 1:
        raise SignalError(f"batch_size must be at least 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def common_prefix_len(ids: list[list[int]]) -> int:
    """Tokens every sample starts with that can be computed once: it stops one token before the first difference
    (so a SeqRec token loss inside it has the same target in every sample) and leaves every sample at least one
    token after it."""
    first = np.asarray(ids[0])
    p = len(first)
    for row in ids[1:]:
        m = min(p, len(row))
        neq = np.flatnonzero(first[:m] != np.asarray(row[:m]))
        p = int(neq[0]) if len(neq) else m
    return max(0, min(p - 1, min(len(i) for i in ids) - 1))


def yes_no_logits(head, hs: torch.Tensor, yes_no) -> torch.Tensor:
    """The "Yes"/"No" logits (float32) only: two rows of a linear output head instead of the whole vocabulary.
    (With 8-bit loading transformers keeps lm_head unquantised, so it is a plain Linear there too.)"""
    if isinstance(head, torch.nn.Linear):
        rows = torch.as_tensor(list(yes_no), device=hs.device)
        bias = head.bias[rows] if head.bias is not None else None
        return torch.nn.functional.linear(hs, head.weight[rows], bias).float()
    return head(hs).float()[:, list(yes_no)]
