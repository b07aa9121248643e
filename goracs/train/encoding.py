"""The training encoding and objective: token ids and labels per sample (SeqRec: every token; CTR: the answer,
or with the two-way loss its Yes/No token), the per-token losses of a left-padded batch, and per-sample losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from goracs.errors import DataError
from goracs.prompts import sample_prompts
from goracs.runtime import model_device
from goracs.tasks import check_samples, check_task
from goracs.text import lm_forward, pad_batch, token_ids, truncate
from goracs.train.config import TrainError


def encode_samples(tokenizer, df, task: str, cutoff_len: int | None = 512, truncation: str = "left",
                   add_eos: bool = True, ctr_loss: str = "token",
                   yes_no: tuple[int, int] | None = None) -> tuple[list[list[int]], list[list[int]], int]:
    """Token ids and labels per sample (SeqRec: all tokens; CTR: answer only) and the number truncated.

    CTR with ctr_loss="two_way": the prompt and the first answer token only, labelled at that token, which must be
    the in-context "Yes" or "No" id (`yes_no`); the loss is then the 2-way cross-entropy over those two logits."""
    check_task(task)
    two_way = task == "ctr" and ctr_loss == "two_way"
    if two_way and yes_no is None:
        raise TrainError("the two-way CTR loss needs the in-context Yes/No token ids")
    ids_all, labels_all, n_trunc = [], [], 0
    eos = tokenizer.eos_token_id
    outputs = df["output"].tolist()
    # the frame's prompt template; the answer as it follows the prompt
    p_all, a_all = token_ids(tokenizer, sample_prompts(df), outputs)
    for idx, out, p, a in zip(df.index, outputs, p_all, a_all):
        if two_way:
            if not a or a[0] not in yes_no:
                raise DataError(f"sample {idx!r}: the answer {out!r} starts with token(s) {a[:3]} after the prompt, "
                                f"not with the Yes/No ids {list(yes_no)}: the tokenizer merges the answer word with "
                                "what follows it; use train.ctr_loss=token or answers that are single tokens")
            a = a[:1]
        elif add_eos and eos is not None:
            a = a + [eos]
        ids = p + a
        labels = list(ids) if task == "seqrec" else [-100] * len(p) + list(a)
        if cutoff_len and len(ids) > cutoff_len:
            n_trunc += 1
            ids, labels = truncate(ids, cutoff_len, truncation), truncate(labels, cutoff_len, truncation)
        if all(x == -100 for x in labels):
            raise DataError(f"sample {idx!r}: no answer token left after truncation to {cutoff_len} tokens "
                            f"(truncation={truncation}); raise cutoff_len or use truncation=left")
        ids_all.append(ids)
        labels_all.append(labels)
    return ids_all, labels_all, n_trunc


def ctr_yes_no(tokenizer, df, c: dict[str, Any], task: str) -> tuple[int, int] | None:
    """The in-context Yes/No ids when the CTR objective is the two-way loss, else None."""
    if task != "ctr" or c["ctr_loss"] != "two_way":
        return None
    from goracs.signals.common import SignalError, ctr_answer_ids

    try:
        return ctr_answer_ids(tokenizer, df)
    except SignalError as e:
        raise TrainError(f"{e} (train.ctr_loss=two_way; train.ctr_loss=token scores whole answers)") from e


def collate(pad_id: int):
    """DataLoader collate of (index, ids, labels) items into a left-padded batch."""
    def fn(items):
        idx = torch.tensor([i for i, _, _ in items], dtype=torch.long)
        ids, mask, labels = pad_batch([s for _, s, _ in items], pad_id, "left", [l for _, _, l in items])
        return {"idx": idx, "input_ids": ids, "attention_mask": mask, "labels": labels}
    return fn


def token_losses(model, batch: dict, yes_no: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of the next-token predictions and the mask of counted tokens.

    Batches are left-padded, so the labelled tokens sit at the end of every row; logits are computed only
    for the last positions that predict a label (the answer alone for CTR: far cheaper than the vocabulary
    over the whole prompt). With `yes_no` (the two-way CTR loss) the one labelled token is the answer, and the
    cross-entropy is taken over the "Yes" and "No" logits only: softmax over two classes, as the authors train."""
    labels = batch["labels"]
    n = labels.shape[1]
    has = labels != -100
    first = torch.where(has.any(1), has.int().argmax(1), torch.full_like(has[:, 0], n - 1, dtype=torch.long))
    keep = min(n, int((n - first).max()) + 1)
    out = lm_forward(model, batch["input_ids"], batch["attention_mask"], logits_to_keep=keep)
    logits = out.logits[:, -keep:-1].float()
    tgt = labels[:, n - keep + 1:]
    mask = tgt != -100
    if yes_no is not None:
        two = logits[..., list(yes_no)]  # (B, T, 2): class 0 = "Yes", class 1 = "No"
        cls = (tgt == int(yes_no[1])).long()
        ce = torch.nn.functional.cross_entropy(two.reshape(-1, 2), cls.reshape(-1), reduction="none").view_as(tgt)
        return ce * mask, mask
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.clamp(min=0).reshape(-1),
                                           reduction="none").view_as(tgt)
    return ce * mask, mask


def per_sample(ce: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean counted-token loss per row."""
    return ce.sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def sequence_loss(model, tokenizer, df, task: str, cutoff_len: int | None = 512, batch_size: int = 8,
                  truncation: str = "left", add_eos: bool = True, progress: bool = False,
                  ctr_loss: str = "two_way") -> np.ndarray:
    """Per-sample loss in the training encoding and objective (SeqRec: mean token loss over prompt + response;
    CTR: the two-way Yes/No cross-entropy, or with ctr_loss="token" the mean token loss of the answer)."""
    check_samples(df, task)
    yes_no = ctr_yes_no(tokenizer, df, {"ctr_loss": ctr_loss}, task)
    ids, labels, _ = encode_samples(tokenizer, df, task, cutoff_len, truncation, add_eos, ctr_loss, yes_no)
    dev = model_device(model)
    was_training = model.training
    model.eval()
    out = np.empty(len(ids), dtype=np.float64)
    starts = range(0, len(ids), batch_size)
    try:
        from tqdm.auto import tqdm

        for s in tqdm(starts, desc="loss", disable=not progress, leave=False):
            b_ids, b_mask, b_lab = pad_batch(ids[s:s + batch_size], tokenizer.pad_token_id, "left",
                                             labels[s:s + batch_size])
            ce, m = token_losses(model, {"input_ids": b_ids.to(dev), "attention_mask": b_mask.to(dev),
                                         "labels": b_lab.to(dev)}, yes_no)
            out[s:s + batch_size] = per_sample(ce, m).cpu().numpy()
    finally:
        model.train(was_training)
    return out
