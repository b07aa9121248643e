"""SeqRec evaluation (BIGRec): generate a title by beam search, ground it to catalogue items by the L2 distance
between base-model last-layer last-token embeddings, and report HR@k / NDCG@k over the target + sampled
negatives (protocol "sampled") or over the whole catalogue (protocol "full")."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goracs.errors import DataError
from goracs.evaluate.config import eval_config
from goracs.evaluate.metrics import hr_ndcg, rank_of_target
from goracs.io import config_hash, save_npy
from goracs.models import model_fingerprint
from goracs.prompts import sample_prompts
from goracs.runtime import model_device, set_threads, sharded_map
from goracs.tasks import check_samples
from goracs.text import lm_forward, pad_batch, token_ids, truncate

log = logging.getLogger(__name__)

PROTOCOLS = ("sampled", "full")


def clean_generation(text: str) -> str:
    """The title in a generated response: its first line without surrounding quotes; when the line does not
    start with a quote but holds a quoted span (an untuned model's 'The next item is "X"'), that span."""
    t = text.strip().split("\n", 1)[0].strip()
    if not t.startswith('"'):
        m = re.search(r'"([^"]+)"', t)
        if m:
            return m.group(1).strip()
    return t.strip('"').strip()


@torch.no_grad()
def generate_titles(model, tokenizer, prompts: list[str], cfg: Any = None) -> list[str]:
    """Batched beam-search generation (first beam kept, bounded new tokens); raw decoded continuations."""
    from tqdm.auto import tqdm

    c = eval_config(cfg)
    dev = model_device(model)
    bs = int(c["batch_size"])
    model.eval()

    def run(idx: list[int]) -> list[str]:
        out: list[str] = []
        for s in tqdm(range(0, len(idx), bs), desc="generate", disable=not c["progress"], leave=False):
            ps = [truncate(p, c["cutoff_len"], "left")
                  for p in token_ids(tokenizer, [prompts[i] for i in idx[s:s + bs]])[0]]
            ids, mask = pad_batch(ps, tokenizer.pad_token_id, "left")
            gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                 num_beams=int(c["num_beams"]), num_return_sequences=1, do_sample=False,
                                 max_new_tokens=int(c["max_new_tokens"]), pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
        return out

    return sharded_map(run, len(prompts))


def _has_lora(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


@contextlib.contextmanager
def base_model_context(model, base_model=None):
    """Yield a module that computes the BASE model (adapters off): base_model if it carries no LoRA layers,
    else the PeftModel with its adapters disabled."""
    from peft import PeftModel

    if base_model is not None and not _has_lora(base_model):
        yield base_model
        return
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
        return
    if base_model is None and not _has_lora(model):
        yield model
        return
    raise DataError("base_model carries LoRA layers (peft wraps models in place) and no PeftModel was given "
                    "to disable them: pass the PeftModel as `model`, or a separate copy of the base model")


@torch.no_grad()
def last_token_embeddings(model, tokenizer, texts: list[str], batch_size: int = 32, max_tokens: int = 64,
                          progress: bool = False) -> np.ndarray:
    """Last-layer hidden state of each text's last token (left padding), as float32 (n, hidden): the LLM
    embedding that grounds generated titles (the sentence-encoder embeddings are goracs.signals.embed's)."""
    from tqdm.auto import tqdm

    dev = model_device(model)
    model.eval()
    out = []
    for s in tqdm(range(0, len(texts), batch_size), desc="embed", disable=not progress, leave=False):
        seqs = []
        batch = texts[s:s + batch_size]
        for t, ids in zip(batch, token_ids(tokenizer, batch)[0]):
            ids = truncate(ids, max_tokens, "right")
            if not ids:
                raise DataError(f"text {t!r} encodes to no token: cannot embed it")
            seqs.append(ids)
        ids, mask = pad_batch(seqs, tokenizer.pad_token_id, "left")
        res = lm_forward(model, ids.to(dev), mask.to(dev), output_hidden_states=True, logits_to_keep=1)
        out.append(res.hidden_states[-1][:, -1].float().cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


def check_catalogue(catalogue) -> None:
    """Fail clearly on a catalogue without item_id/title columns, duplicate ids or empty titles."""
    import pandas as pd

    if not isinstance(catalogue, pd.DataFrame):
        raise DataError(f"catalogue: expected a pandas DataFrame, got {type(catalogue).__name__}")
    miss = [c for c in ("item_id", "title") if c not in catalogue.columns]
    if miss:
        raise DataError(f"catalogue: missing column(s) {miss}; present: {list(catalogue.columns)}")
    if len(catalogue) == 0:
        raise DataError("catalogue: no items")
    ids = catalogue["item_id"].astype(str)
    dup = ids[ids.duplicated()].tolist()
    if dup:
        raise DataError(f"catalogue: duplicate item_id(s) {dup[:5]}")
    bad = catalogue["item_id"][[not isinstance(t, str) or not t.strip() for t in catalogue["title"]]].tolist()
    if bad:
        raise DataError(f"catalogue: empty or non-text title for item(s) {bad[:5]}")


def catalogue_embeddings(model, tokenizer, catalogue, cache_dir=None, batch_size: int = 32,
                         max_tokens: int = 64, progress: bool = False) -> np.ndarray:
    """Base-model embeddings of every catalogue title, cached on disk keyed by model and titles."""
    check_catalogue(catalogue)
    titles = catalogue["title"].tolist()
    path = None
    if cache_dir is not None:
        key = config_hash({"model": model_fingerprint(model, lora=False), "tokenizer": type(tokenizer).__name__,
                           "vocab": len(tokenizer), "titles": titles, "max_tokens": max_tokens,
                           "pooling": "last_layer_last_token"})
        path = Path(cache_dir) / f"catalogue_emb_{key}.npy"
        if path.exists():
            emb = np.load(path)
            if emb.shape[0] == len(titles):
                log.info("catalogue embeddings from cache %s", path)
                return emb
            log.warning("cache %s has %d rows for %d titles: recomputing", path, emb.shape[0], len(titles))
    emb = last_token_embeddings(model, tokenizer, titles, batch_size, max_tokens, progress)
    if path is not None:
        save_npy(path, emb)
    return emb


def _check_test(test_df, catalogue, protocol: str, num_negatives: int) -> None:
    require = ("target", "negatives") if protocol == "sampled" else ("target",)
    check_samples(test_df, "seqrec", "SeqRec test samples", require=require)
    known = set(catalogue["item_id"].astype(str))
    bad = [i for i, t in zip(test_df.index, test_df["target"]) if str(t) not in known]
    if bad:
        raise DataError(f"SeqRec test samples {bad[:5]}: target item not in the catalogue "
                        "(test samples and catalogue come from different datasets?)")
    if protocol != "sampled":
        return
    lens = set()
    for i, t, negs in zip(test_df.index, test_df["target"], test_df["negatives"]):
        negs = [str(x) for x in negs]
        if str(t) in negs:
            raise DataError(f"SeqRec test sample {i!r}: the negatives contain the target {t!r}")
        unknown = [x for x in negs if x not in known]
        if unknown:
            raise DataError(f"SeqRec test sample {i!r}: negative item(s) {unknown[:3]} not in the catalogue")
        if len(set(negs)) != len(negs):
            raise DataError(f"SeqRec test sample {i!r}: duplicate negatives")
        lens.add(len(negs))
    if len(lens) > 1:
        raise DataError(f"SeqRec test samples have different numbers of negatives {sorted(lens)}")
    if lens != {int(num_negatives)}:
        warnings.warn(f"SeqRec test samples have {lens.pop()} negatives, not {num_negatives}", stacklevel=3)


def rank_generations(generations: list[str], test_df, catalogue, cat_emb: np.ndarray, embed_fn,
                     protocol: str = "sampled", ks=(5, 10)) -> dict[str, Any]:
    """Ground generated titles to catalogue items by L2 distance and rank each target (metrics + per sample).

    A generation that is empty after cleaning matches no item: its target gets rank n_candidates (past the
    end of every list, so a miss at every k)."""
    if protocol not in PROTOCOLS:
        raise DataError(f"eval.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if len(generations) != len(test_df):
        raise DataError(f"{len(generations)} generations for {len(test_df)} test samples")
    cleaned = [clean_generation(g) for g in generations]
    pos = {str(x): k for k, x in enumerate(catalogue["item_id"].astype(str))}
    nonempty = [k for k, g in enumerate(cleaned) if g]
    gen_emb = embed_fn([cleaned[k] for k in nonempty]) if nonempty else None
    row_of = {k: r for r, k in enumerate(nonempty)}
    cat_emb = np.asarray(cat_emb, dtype=np.float64)
    titles = set(catalogue["title"].tolist())
    ranks, n_cand = [], None
    negs_col = test_df["negatives"].tolist() if protocol == "sampled" else None
    for k, t in enumerate(test_df["target"].astype(str)):
        cand = ([pos[t]] + [pos[str(x)] for x in negs_col[k]]) if protocol == "sampled" else None
        n = len(cand) if cand is not None else len(cat_emb)
        n_cand = n
        if k not in row_of:
            ranks.append(n)
            continue
        g = np.asarray(gen_emb[row_of[k]], dtype=np.float64)
        if cand is not None:
            d = np.linalg.norm(cat_emb[cand] - g, axis=1)
            ranks.append(int(rank_of_target(d, 0)))
        else:
            d = np.linalg.norm(cat_emb - g, axis=1)
            ranks.append(int(rank_of_target(d, pos[t])))
    ranks_a = np.asarray(ranks)
    out = hr_ndcg(ranks_a, ks)
    out.update({
        "protocol": protocol, "n": len(ranks), "n_candidates": int(n_cand), "mean_rank": float(ranks_a.mean()),
        "n_empty_generations": len(cleaned) - len(nonempty),
        "exact_title_rate": float(np.mean([g in titles for g in cleaned])),
        "per_sample": {"target": test_df["target"].astype(str).tolist(), "generation": cleaned,
                       "rank": ranks_a.tolist()},
    })
    return out


def evaluate_seqrec(model, base_model, tokenizer, test_df, catalogue, cfg: Any = None,
                    cache_dir=None) -> dict[str, Any]:
    """Generate titles with `model`, ground them with the base model, and report HR@k / NDCG@k.

    `base_model` may be None (the PeftModel's adapters are then disabled for grounding). cfg keys:
    protocol (sampled | full), num_beams, max_new_tokens, batch_size, ks, max_samples, num_negatives."""
    c = eval_config(cfg)
    set_threads(c["num_threads"])
    check_catalogue(catalogue)
    if c["protocol"] not in PROTOCOLS:
        raise DataError(f"eval.protocol must be one of {PROTOCOLS}, got {c['protocol']!r}")
    if c["max_samples"] and len(test_df) > int(c["max_samples"]):
        test_df = test_df.sample(n=int(c["max_samples"]), random_state=int(c["seed"])).sort_index()
    _check_test(test_df, catalogue, c["protocol"], c["num_negatives"])
    prompts = sample_prompts(test_df)  # the frame's prompt template, as in training and the signals
    gens = generate_titles(model, tokenizer, prompts, c)
    with base_model_context(model, base_model) as base:
        cat_emb = catalogue_embeddings(base, tokenizer, catalogue, cache_dir, int(c["embed_batch_size"]),
                                       int(c["title_max_tokens"]), bool(c["progress"]))

        def embed_fn(texts):
            return last_token_embeddings(base, tokenizer, texts, int(c["embed_batch_size"]),
                                         int(c["title_max_tokens"]))

        res = rank_generations(gens, test_df, catalogue, cat_emb, embed_fn, c["protocol"], tuple(c["ks"]))
    res["per_sample"]["raw_generation"] = gens
    res["per_sample"]["ids"] = [str(i) for i in test_df.index]  # the samples evaluated (max_samples draws some)
    if res["n_empty_generations"]:
        log.warning("%d of %d generations are empty: counted as misses", res["n_empty_generations"], res["n"])
    return res
