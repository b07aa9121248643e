"""EL2N scores (Paul et al. 2021): the L2 norm of the prediction error of the model it is given.

CTR: the 2-way softmax over the "Yes"/"No" logits at the answer position against the one-hot label, i.e.
||(p_yes, p_no) - (y, 1 - y)||_2 = sqrt(2) * |P(Yes) - y|. SeqRec: the mean over response tokens (the target
title and the closing eos) of ||softmax(logits) - one-hot(next token)||_2 over the whole vocabulary.
The warm-up fine-tune (configs/signals: el2n_warmup_epochs, 0 = the starting point) is run by the pipeline.

For LLaMA decoders the scores come from the packed forward of goracs.signals.packed (as the gradient norms do):
the prompt prefix that every sample shares runs once, the suffixes run without padding, and the last layer, the
final norm and the output head run only at the positions that are scored (CTR: the answer position and the
Yes/No rows of the head; SeqRec: the positions that predict a response token). Other models, or packed=False,
use the padded Hugging Face forward; both give the same scores.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from goracs.signals import packed as P
from goracs.runtime import model_device
from goracs.signals.common import (Encoded, SignalError, backbone, ctr_answer_ids, common_prefix_len, encode,
                                   length_batches, pad_id_of, yes_no_logits)
from goracs.text import pad_right


def _scores(task: str, logits: torch.Tensor, targets: torch.Tensor, seg: torch.Tensor | None,
            n_rows: int) -> torch.Tensor:
    """EL2N of n_rows samples from the logits at their scored positions (CTR: the (Yes, No) logits, one row per
    sample, `targets` = the labels; SeqRec: full-vocabulary logits, one row per response token, `seg` = its sample,
    `targets` = the token)."""
    if task == "ctr":
        p_yes = torch.softmax(logits.float(), dim=-1)[:, 0]
        return np.sqrt(2.0) * (p_yes - targets.float()).abs()
    probs = torch.softmax(logits.float(), dim=-1)
    p_true = probs.gather(1, targets[:, None]).squeeze(1)
    err = ((probs * probs).sum(1) - 2 * p_true + 1).clamp_min(0).sqrt()
    score = torch.zeros(n_rows, device=logits.device).index_add_(0, seg, err)
    return score / torch.bincount(seg, minlength=n_rows).float()


def _response_rows(enc: Encoded, rows, start: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Per sample: the positions (minus `start`) that predict a response token, and those tokens."""
    q, t = [], []
    for k in rows:
        pos = range(max(enc.n_prompt[k], 1), len(enc.ids[k]))
        q.append([p - 1 - start for p in pos])
        t.append([enc.ids[k][p] for p in pos])
    return q, t


def _packed_prefix(model, enc: Encoded, task: str, min_len: int) -> tuple[int, P.PrefixKV | None]:
    """The shared prompt prefix run once: (its length, its key/value cache), or (0, None) when it is shorter
    than min_len. It stops before the first scored position, so every scored row lies in the packed suffix."""
    c = common_prefix_len(enc.ids)
    if task == "seqrec":
        c = min(c, min(max(p, 1) for p in enc.n_prompt) - 1)
    if min_len <= 0 or c < max(1, int(min_len)):
        return 0, None
    return c, P.prefix_cache(model, enc.ids[0][:c], model_device(model))


def _packed_batch(model, enc: Encoded, rows: np.ndarray, task: str, yes_no, c: int, kv) -> torch.Tensor:
    """EL2N of the samples `rows` from the packed forward (see the module docstring)."""
    dev = model_device(model)
    dec, head, layers = P.decoder_parts(model)
    pk = P.pack(model, [enc.ids[k][c:] for k in rows], c, dev)
    h = P.lower_layers(model, pk, kv)
    if task == "ctr":
        q_rows = [[n - 1] for n in pk.lens]
        targets = torch.as_tensor(enc.labels[rows], device=dev)
        seg = None
    else:
        q_rows, toks = _response_rows(enc, rows, c)
        targets = torch.as_tensor(np.concatenate(toks), device=dev)
        seg = torch.as_tensor(np.repeat(np.arange(len(rows)), [len(r) for r in q_rows]), device=dev)
    k_pre = kv.keys[-1] if kv is not None else None
    v_pre = kv.values[-1] if kv is not None else None
    hs = dec.norm(P.last_layer_outputs(layers[-1], h, pk, k_pre, v_pre, q_rows))
    logits = yes_no_logits(head, hs, yes_no) if task == "ctr" else head(hs)
    return _scores(task, logits, targets, seg, len(rows))


def _check(score: torch.Tensor, rows: np.ndarray) -> None:
    if not torch.isfinite(score).all():
        bad = int(rows[int(torch.nonzero(~torch.isfinite(score))[0])])
        raise SignalError(f"non-finite EL2N score for sample {bad}; check the model weights and dtype")


def _padded_batch(decoder, head, enc: Encoded, rows: np.ndarray, task: str, yes_no, pad_id: int,
                  dev) -> torch.Tensor:
    """EL2N of the samples `rows` from the padded Hugging Face forward (any causal LM)."""
    ids, mask = pad_right([enc.ids[k] for k in rows], pad_id, dev)
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if task == "ctr":
        last = mask.sum(1) - 1
        logits = yes_no_logits(head, hidden[torch.arange(len(rows), device=dev), last], yes_no)
        return _scores(task, logits, torch.as_tensor(enc.labels[rows], device=dev), None, len(rows))
    # response targets sit at positions n_prompt..len-1, predicted from one position earlier
    q_rows, toks = _response_rows(enc, rows)
    seg = torch.as_tensor(np.repeat(np.arange(len(rows)), [len(r) for r in q_rows]), device=dev)
    pos = torch.as_tensor(np.concatenate(q_rows), device=dev)
    targets = torch.as_tensor(np.concatenate(toks), device=dev)
    return _scores(task, head(hidden[seg, pos]), targets, seg, len(rows))


@torch.no_grad()
def el2n_scores(model, tokenizer, df, task: str, batch_size: int = 8, max_len: int = 512,
                shared_prefix: int = 16, packed: bool = True, progress: bool = True) -> np.ndarray:
    """Per-sample EL2N score (N,) float32 of `model` on the split (no gradients, eval mode). `packed` runs
    LLaMA decoders without padding, with a shared prompt prefix of at least `shared_prefix` tokens run once
    (0 = off); the scores are the same."""
    enc = encode(tokenizer, df, task, max_len)
    yes_no = ctr_answer_ids(tokenizer, df) if task == "ctr" else None
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
    use_packed = bool(packed) and P.packable(model)
    try:
        c, kv = _packed_prefix(model, enc, task, int(shared_prefix)) if use_packed else (0, None)
        with tqdm(total=len(enc.ids), desc=f"EL2N ({task})", disable=not progress) as bar:
            for rows in length_batches([len(i) for i in enc.ids], batch_size):
                if use_packed:
                    score = _packed_batch(model, enc, rows, task, yes_no, c, kv)
                else:
                    score = _padded_batch(decoder, head, enc, rows, task, yes_no, pad_id, dev)
                _check(score, rows)
                out[rows] = score.cpu().numpy()
                bar.update(len(rows))
    finally:
        model.train(training)
    return out
