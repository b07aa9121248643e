"""Per-sample gradient norms w.r.t. the LoRA B matrix of v_proj (method.md 4), all samples of a batch in one
backward pass, cached in resumable shards that several processes can fill side by side.

Closed form: the LoRA B matrix (out x r) sees, per token t, the input a_t = A x_t (r-dim) and receives the output
gradient g_t, so one sample's gradient is sum_t g_t a_t^T. Because the samples of a batch do not interact (eval
mode, causal attention, right padding, per-sample losses summed), the gradient of the summed loss w.r.t. the
captured lora_B output holds every sample's g_t at once; an einsum over tokens gives all per-sample gradients.

For a LLaMA decoder with the target in the last layer (the default) the batch runs packed, without padding
(goracs.signals.packed): the prompt prefix that all samples share runs once, the layers below the target run without
autograd, and the last layer computes queries, attention output, MLP, final norm and output head only at the
positions whose loss counts (CTR: the answer position and only the Yes/No rows of the head; SeqRec: every
position with a next token, with the token-loss gradient w.r.t. the head input in closed form). Other models
and lower target layers use the padded Hugging Face forward with the same closed form.

The batch closed forms are in goracs.signals.grad_batch, the LoRA plumbing in goracs.signals.lora_b. Run
data-parallel with scripts/grads_distributed.py (or python -m goracs.signals.grads) under
  accelerate launch --multi_gpu --num_processes K scripts/grads_distributed.py [--cpu] --data ... --out ...
(on a CPU-only machine too: accelerate 1.15 starts a single process for `accelerate launch --cpu` unless an MPI
hostfile is given, while --multi_gpu goes through torchrun and the script then joins a gloo group on the CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from goracs.io import config_hash, save_npy, write_json
from goracs.models import model_fingerprint
from goracs.runtime import model_device
from goracs.signals import grad_batch as B
from goracs.signals.common import SignalError, ctr_answer_ids, encode, length_batches, pad_id_of
from goracs.signals.grad_batch import check_finite, sample_losses
from goracs.signals.lora_b import ensure_lora, grad_only_for, lora_b_module
from goracs.text import pad_right

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def _prepare(model, tokenizer, df, task, layer, max_len, lora_seed, lora=None):
    enc = encode(tokenizer, df, task, max_len)
    yes_no = ctr_answer_ids(tokenizer, df) if task == "ctr" else None
    model = ensure_lora(model, lora_seed=lora_seed, **dict(lora or {}))
    lora_b, idx = lora_b_module(model, layer)
    return model, enc, yes_no, lora_b, idx


def grad_norms(model, tokenizer, df, task: str, layer: int = -1, batch_size: int = 8, max_len: int = 512,
               shard_dir: str | Path | None = None, shard_size: int = 512, *, rank: int = 0,
               world_size: int = 1, lora_seed: int = 0, lora: dict | None = None, shared_prefix: int = 16,
               packed: bool = True, progress: bool = True) -> np.ndarray | None:
    """Per-sample gradient norms (N,) float32 w.r.t. LoRA B of v_proj at `layer`; batched closed form.

    With `shard_dir`, shards of `shard_size` samples are cached under a content key and skipped when present
    (resume); process `rank` of `world_size` fills shards rank, rank + world_size, ...; the full array is
    returned once every shard exists, else None. A plain model is wrapped with LoRA in place (seed lora_seed,
    `lora` = {r, alpha, dropout, target_modules} as in configs/model, default r 8, alpha 16, q_proj + v_proj).
    When all samples share a token prefix of at least `shared_prefix` tokens (the Alpaca header and the
    instruction) and the target is the last layer, the prefix is run once and its key/value cache reused
    (0 = off); the values are the same. `packed` (default) runs LLaMA decoders without padding when the target
    is the last layer (see the module docstring); False forces the padded Hugging Face forward.
    """
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise SignalError(f"rank={rank} is not valid for world_size={world_size}")
    model, enc, yes_no, lora_b, idx = _prepare(model, tokenizer, df, task, layer, max_len, lora_seed, lora)
    n, pad_id = len(enc.ids), pad_id_of(tokenizer)
    pre = None

    def run(rows_list: list[np.ndarray], bar) -> list[np.ndarray]:
        outs = []
        for rows in rows_list:
            res = np.empty(len(rows), dtype=np.float32)
            for b in length_batches([len(enc.ids[k]) for k in rows], batch_size):
                res[b] = B.batch_norms(model, lora_b, enc, rows[b], task, yes_no, pad_id, pre)
                bar.update(len(b))
            outs.append(res)
        return outs

    with grad_only_for(model, lora_b.weight):
        if shared_prefix and int(shared_prefix) > 0:
            pre = B.prefix_state(model, lora_b, idx, enc, task, int(shared_prefix))
        if packed:
            pre = B.packed_state(model, lora_b, idx, pre) or pre
        if shard_dir is None:
            if world_size != 1:
                raise SignalError("several processes need a shard_dir to write their shards to")
            with tqdm(total=n, desc=f"grad norms ({task})", disable=not progress) as bar:
                return run([np.arange(n)], bar)[0]
        if int(shard_size) < 1:
            raise SignalError(f"shard_size must be at least 1, got {shard_size}")
        key = {"signal": "grad_norm", "version": CACHE_VERSION, "task": task, "layer": idx, "max_len": int(max_len),
               "inputs": enc.digest(), "n": n, "model": model_fingerprint(model), "shard_size": int(shard_size),
               "shared_prefix": pre["len"] if pre else 0}
        folder = Path(shard_dir) / f"grads-{config_hash(key)}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "meta.json").exists():
            with contextlib.suppress(FileExistsError, OSError):
                write_json(folder / "meta.json", key)
        n_shards = math.ceil(n / shard_size)
        path = lambda s: folder / f"shard_{s:05d}.npy"  # noqa: E731
        todo = [s for s in range(rank, n_shards, world_size) if not path(s).exists()]
        if todo:
            log.info("grad norms: rank %d computes %d of %d shards in %s", rank, len(todo), n_shards, folder)
        total = sum(min(n, (s + 1) * shard_size) - s * shard_size for s in todo)
        with tqdm(total=total, desc=f"grad norms ({task}, rank {rank})", disable=not progress) as bar:
            for s in todo:
                rows = np.arange(s * shard_size, min(n, (s + 1) * shard_size))
                save_npy(path(s), run([rows], bar)[0])
    if all(path(s).exists() for s in range(n_shards)):
        out = np.concatenate([np.load(path(s)) for s in range(n_shards)]).astype(np.float32)
        if len(out) != n:
            raise SignalError(f"the shards in {folder} hold {len(out)} values for {n} samples; delete the folder")
        return out
    return None


def grad_norms_loop(model, tokenizer, df, task: str, layer: int = -1, max_len: int = 512, lora_seed: int = 0,
                    lora: dict | None = None, progress: bool = True) -> np.ndarray:
    """Reference: one forward and backward per sample, the norm of lora_B.weight.grad (slow; for checks)."""
    model, enc, yes_no, lora_b, idx = _prepare(model, tokenizer, df, task, layer, max_len, lora_seed, lora)
    dev, pad_id = model_device(model), pad_id_of(tokenizer)
    out = np.empty(len(enc.ids), dtype=np.float32)
    with grad_only_for(model, lora_b.weight):
        for k in tqdm(range(len(enc.ids)), desc=f"grad norms loop ({task})", disable=not progress):
            ids, mask = pad_right([enc.ids[k]], pad_id, dev)
            labels = torch.as_tensor(enc.labels[[k]], device=dev) if enc.labels is not None else None
            loss = sample_losses(model, ids, mask, task, labels, yes_no)
            check_finite(loss, np.array([k]), task)
            lora_b.weight.grad = None
            loss.sum().backward()
            out[k] = float(lora_b.weight.grad.float().norm())
        lora_b.weight.grad = None
    return out


if __name__ == "__main__":  # `python -m goracs.signals.grads`: the command line of scripts/grads_distributed.py
    import runpy
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "grads_distributed.py"
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")
