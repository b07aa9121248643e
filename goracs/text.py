"""Token ids of samples, answers and padded batches: the one tokenisation of prompt + answer that training,
the LM signals and evaluation share, left/right truncation and padding, and the mask-positioned forward."""

from __future__ import annotations

from typing import Sequence

import torch

from goracs.errors import DataError


def token_ids(tokenizer, prompts: Sequence[str], answers: Sequence[str] | None = None, *,
              answer_in_context: bool = True) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt (with the tokenizer's special tokens) and of its answer ([] without answers).

    answer_in_context=True (training, evaluation): the answer's ids as they follow the prompt in prompt + answer
    (a SentencePiece tokenizer gives a word after a newline another id than at the start of a text), or the answer
    encoded alone where the tokenizer merged tokens across the boundary. False (the signals' SeqRec encoding,
    kept so that gradient norms and EL2N, and their caches, stay the same): the answer encoded alone, without
    special tokens; for the SmolLM2 (byte-level BPE) tokenizer both give the same ids."""
    prompts = [str(p) for p in prompts]
    if not prompts:
        return [], []
    p_ids = [list(x) for x in tokenizer(prompts)["input_ids"]]
    if answers is None:
        return p_ids, [[] for _ in prompts]
    answers = [str(a) for a in answers]
    if len(answers) != len(prompts):
        raise DataError(f"{len(answers)} answers for {len(prompts)} prompts")
    if not answer_in_context:
        return p_ids, [list(x) for x in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    a_ids: list[list[int]] = [[] for _ in prompts]
    todo = [k for k, a in enumerate(answers) if a]
    if not todo:
        return p_ids, a_ids
    full = tokenizer([prompts[k] + answers[k] for k in todo])["input_ids"]
    alone = []
    for k, f in zip(todo, full):
        p = p_ids[k]
        if f[:len(p)] == p and len(f) > len(p):
            a_ids[k] = list(f[len(p):])
        else:  # the tokenizer merged across the boundary: encode the answer on its own
            alone.append(k)
    if alone:
        for k, a in zip(alone, tokenizer([answers[k] for k in alone], add_special_tokens=False)["input_ids"]):
            a_ids[k] = list(a)
    return p_ids, a_ids


def answer_token_ids(tokenizer, prompt: str, words: Sequence[str] = ("Yes", "No")) -> tuple[list[int], ...]:
    """Token ids of each answer word as it follows `prompt` (never encoded without context: a SentencePiece
    tokenizer gives a word at the start of a text another id than after a newline); fails when a word encodes
    to no token or two words to the same tokens."""
    words = [str(w) for w in words]
    _, ids = token_ids(tokenizer, [prompt] * len(words), words)
    for w, t in zip(words, ids):
        if not t:
            raise DataError(f"the tokenizer encodes the answer {w!r} to no token")
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if ids[i] == ids[j]:
                raise DataError(f"the answers {[words[i], words[j]]} encode to the same token(s) {ids[i]} after "
                                "the prompt")
    return tuple(ids)


def truncate(ids: list[int], cutoff_len: int | None, side: str = "left") -> list[int]:
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
    ids = torch.full((len(seqs), n), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long) if label_seqs is not None else None
    for i, s in enumerate(seqs):
        sl = slice(n - len(s), n) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.as_tensor(s, dtype=torch.long)
        mask[i, sl] = 1
        if labels is not None:
            labels[i, sl] = torch.as_tensor(label_seqs[i], dtype=torch.long)
    return (ids, mask, labels) if labels is not None else (ids, mask)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) on `device`: real tokens keep positions 0..L-1, as if alone."""
    ids, mask = pad_batch(rows, pad_id, "right")
    return ids.to(device), mask.to(device)


def lm_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw):
    """Causal-LM forward with positions derived from the attention mask."""
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids(attention_mask), use_cache=False, **kw)
