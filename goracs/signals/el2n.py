"""EL2N scores (Paul et al. 2021): the L2 norm of the prediction error of the model it is given.

CTR: the 2-way softmax over the "Yes"/"No" logits at the answer position against the one-hot label, i.e.
||(p_yes, p_no) - (y, 1 - y)||_2 = sqrt(2) * |P(Yes) - y|. SeqRec: the mean over response tokens (the target
title and the closing eos) of ||softmax(logits) - one-hot(next token)||_2 over the whole vocabulary.
The warm-up fine-tune (configs/signals: el2n_warmup_epochs, 0 = the starting point) is run by the pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from goracs.signals.common import (SignalError, answer_token_ids, backbone, encode, length_batches, model_device,
                                   pad_id_of, pad_right)


@torch.no_grad()
def el2n_scores(model, tokenizer, df, task: str, batch_size: int = 8, max_len: int = 512,
                progress: bool = True) -> np.ndarray:
    """Per-sample EL2N score (N,) float32 of `model` on the split (no gradients, eval mode)."""
    enc = encode(tokenizer, df, task, max_len)
    yes_no = answer_token_ids(tokenizer) if task == "ctr" else None
    if task == "seqrec":
        empty = [k for k, (ids, p) in enumerate(zip(enc.ids, enc.n_prompt)) if len(ids) <= p]
        if empty:
            raise SignalError(f"{len(empty)} SeqRec samples keep no response token within max_len={max_len} "
                              f"(first: sample {empty[0]}); raise max_len")
    decoder, head = backbone(model)
    dev, pad_id = model_device(model), pad_id_of(tokenizer)
    out = np.empty(len(enc.ids), dtype=np.float32)
    training = model.training
    model.eval()
    try:
        with tqdm(total=len(enc.ids), desc=f"EL2N ({task})", disable=not progress) as bar:
            for rows in length_batches([len(i) for i in enc.ids], batch_size):
                ids, mask = pad_right([enc.ids[k] for k in rows], pad_id, dev)
                hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                if task == "ctr":
                    last = mask.sum(1) - 1
                    logits = head(hidden[torch.arange(len(rows), device=dev), last]).float()[:, list(yes_no)]
                    p_yes = torch.softmax(logits, dim=-1)[:, 0]
                    y = torch.as_tensor(enc.labels[rows], device=dev).float()
                    score = np.sqrt(2.0) * (p_yes - y).abs()
                else:
                    # response targets sit at positions n_prompt..len-1, predicted from one position earlier
                    b_idx, t_idx = [], []
                    for j, k in enumerate(rows):
                        pos = range(max(enc.n_prompt[k], 1), len(enc.ids[k]))
                        b_idx += [j] * len(pos)
                        t_idx += list(pos)
                    b_t = torch.as_tensor(b_idx, device=dev)
                    t_t = torch.as_tensor(t_idx, device=dev)
                    probs = torch.softmax(head(hidden[b_t, t_t - 1]).float(), dim=-1)
                    tgt = ids[b_t, t_t]
                    p_true = probs.gather(1, tgt[:, None]).squeeze(1)
                    err = ((probs * probs).sum(1) - 2 * p_true + 1).clamp_min(0).sqrt()
                    score = torch.zeros(len(rows), device=dev).index_add_(0, b_t, err)
                    score = score / torch.bincount(b_t, minlength=len(rows)).float()
                if not torch.isfinite(score).all():
                    bad = int(rows[int(torch.nonzero(~torch.isfinite(score))[0])])
                    raise SignalError(f"non-finite EL2N score for sample {bad}; check the model weights and dtype")
                out[rows] = score.cpu().numpy()
                bar.update(len(rows))
    finally:
        model.train(training)
    return out
