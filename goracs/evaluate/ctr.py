"""CTR evaluation (TALLRec): P(Yes) from the Yes/No logits at the last prompt position; AUC and log-loss."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from goracs.errors import DataError
from goracs.evaluate.config import eval_config
from goracs.evaluate.metrics import auc_logloss
from goracs.prompts import sample_prompts
from goracs.runtime import model_device, set_threads, sharded_map
from goracs.tasks import check_samples
from goracs.text import answer_token_ids, lm_forward, pad_batch, token_ids, truncate

log = logging.getLogger(__name__)

@torch.no_grad()
def p_yes(model, tokenizer, prompts: list[str], cfg: Any = None) -> tuple[np.ndarray, str]:
    """P(Yes) per prompt and the method used ('logits': single-token answers, 'sequence': multi-token)."""
    from tqdm.auto import tqdm

    c = eval_config(cfg)
    if not prompts:
        raise DataError("no prompts to score")
    y_ids, n_ids = answer_token_ids(tokenizer, prompts[0], (c["yes"], c["no"]))
    single = len(y_ids) == 1 and len(n_ids) == 1
    if not single and c["multi_token"] != "sequence":
        raise DataError(f"the tokenizer splits the answers into several tokens ({c['yes']!r} -> {y_ids}, "
                        f"{c['no']!r} -> {n_ids}); set eval.multi_token=sequence to score whole answers")
    method = "logits" if single and c["multi_token"] != "force_sequence" else "sequence"
    if not single:
        log.warning("answers are multi-token (%s, %s): P(Yes) from whole-answer log-probabilities", y_ids, n_ids)
    dev = model_device(model)
    bs = int(c["batch_size"])
    cut = c["cutoff_len"]
    model.eval()

    keep = (cut - (0 if method == "logits" else max(len(y_ids), len(n_ids)))) if cut else None

    from goracs.signals import packed as P

    def score(idx: list[int]) -> list[float]:
        if method == "logits" and P.packable(model):
            # LLaMA decoders: the shared prompt prefix once, no padding, the head's Yes/No rows at the last position
            seqs = [truncate(p, keep, "left") for p in token_ids(tokenizer, [prompts[i] for i in idx])[0]]
            two = P.answer_logits(model, seqs, (y_ids[0], n_ids[0]), bs, progress=c["progress"], desc="ctr eval")
            return torch.softmax(two, dim=1)[:, 0].tolist()
        out: list[float] = []
        for s in tqdm(range(0, len(idx), bs), desc="ctr eval", disable=not c["progress"], leave=False):
            ps = [truncate(p, keep, "left") for p in token_ids(tokenizer, [prompts[i] for i in idx[s:s + bs]])[0]]
            if method == "logits":
                ids, mask = pad_batch(ps, tokenizer.pad_token_id, "left")
                logits = lm_forward(model, ids.to(dev), mask.to(dev)).logits[:, -1].float()
                two = torch.stack([logits[:, y_ids[0]], logits[:, n_ids[0]]], dim=1)
                out += torch.softmax(two, dim=1)[:, 0].cpu().tolist()
            else:
                lp = [_answer_logprob(model, tokenizer, ps, a, dev) for a in (y_ids, n_ids)]
                out += torch.sigmoid(lp[0] - lp[1]).cpu().tolist()
        return out

    return np.asarray(sharded_map(score, len(prompts)), dtype=np.float64), method


def _answer_logprob(model, tokenizer, prompts: list[list[int]], answer: list[int], dev) -> torch.Tensor:
    """Sum of log-probabilities of the answer tokens after each prompt (teacher forcing)."""
    seqs = [p + answer for p in prompts]
    ids, mask = pad_batch(seqs, tokenizer.pad_token_id, "left")
    logp = torch.log_softmax(lm_forward(model, ids.to(dev), mask.to(dev)).logits.float(), dim=-1)
    k = len(answer)
    # the answer occupies the last k positions; its tokens are predicted from positions -k-1 .. -2
    pred = logp[:, -k - 1:-1]
    tgt = torch.tensor(answer, device=dev).expand(len(seqs), k)
    return pred.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum(1)


def evaluate_ctr(model, tokenizer, test_df, cfg: Any = None) -> dict[str, Any]:
    """AUC and log-loss of P(Yes) on the CTR test samples (labels from `label`); P(Yes) per sample included."""
    c = eval_config(cfg)
    set_threads(c["num_threads"])
    check_samples(test_df, "ctr", "CTR test samples", require=("label",))
    prompts = sample_prompts(test_df)  # the frame's prompt template, as in training and the signals
    p, method = p_yes(model, tokenizer, prompts, c)
    labels = test_df["label"].to_numpy().astype(int)
    m = auc_logloss(labels, p)
    return {**m, "accuracy": float(((p >= 0.5).astype(int) == labels).mean()), "n": int(len(labels)),
            "positive_rate": float(labels.mean()), "mean_p_yes": float(p.mean()), "method": method,
            "p_yes": p.tolist(), "labels": labels.tolist()}
