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

Run data-parallel with scripts/grads_distributed.py (or python -m goracs.signals.grads) under
  accelerate launch --multi_gpu --num_processes K scripts/grads_distributed.py [--cpu] --data ... --out ...
(on a CPU-only machine too: accelerate 1.15 starts a single process for `accelerate launch --cpu` unless an MPI
hostfile is given, while --multi_gpu goes through torchrun and the script then joins a gloo group on the CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from goracs.io import atomic_path, config_hash, save_npy, write_json
from goracs.models import add_lora
from goracs.signals import packed as P
from goracs.signals.common import (Encoded, SignalError, backbone, ctr_answer_ids, common_prefix_len, encode,
                                   length_batches, model_device, pad_id_of, pad_right, yes_no_logits)

log = logging.getLogger(__name__)

CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------- model plumbing
def ensure_lora(model, lora_seed: int = 0, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                target_modules: tuple[str, ...] = ("q_proj", "v_proj")):
    """Return the model itself when it carries LoRA adapters, else wrap it (in place, seeded A init)."""
    if hasattr(model, "peft_config") or any(hasattr(m, "lora_A") for m in model.modules()):
        return model  # a PeftModel, or a base model whose layers already carry injected LoRA adapters
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(lora_seed))
        return add_lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=tuple(target_modules))


def lora_b_module(model, layer: int = -1, module: str = "v_proj") -> tuple[torch.nn.Module, int]:
    """The LoRA B linear of `module` in decoder layer `layer` (negative counts from the end), and the index."""
    found: dict[int, torch.nn.Module] = {}
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] == module and hasattr(mod, "lora_B"):
            m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
            if m:
                found[int(m.group(1))] = mod
    if not found:
        raise SignalError(f"the model has no LoRA adapter on a module named '{module}' inside its decoder layers "
                          "(check lora.target_modules)")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n_layers = int(getattr(base.config, "num_hidden_layers", max(found) + 1))
    idx = int(layer) + n_layers if int(layer) < 0 else int(layer)
    if not 0 <= idx < n_layers:
        raise SignalError(f"grad_layer={layer} is out of range for a model with {n_layers} decoder layers")
    if idx not in found:
        raise SignalError(f"decoder layer {idx} (grad_layer={layer}) has no LoRA adapter on '{module}'")
    mod = found[idx]
    adapters = list(getattr(mod, "active_adapters", ["default"]))
    if len(adapters) != 1:
        raise SignalError(f"layer {idx} {module} has {len(adapters)} active LoRA adapters {adapters}; need one")
    ad = adapters[0]
    if getattr(mod, "merged", False):
        raise SignalError(f"the LoRA adapter of layer {idx} {module} is merged into the weights; unmerge it first")
    if ad in getattr(mod, "lora_variant", {}):
        raise SignalError(f"layer {idx} {module} uses a LoRA variant ({type(mod.lora_variant[ad]).__name__}); "
                          "only vanilla LoRA is supported")
    return mod.lora_B[ad], idx


def _lora_scaling(model, lora_b: torch.nn.Module) -> float:
    """The LoRA scaling (alpha / r) of the adapter whose B linear is `lora_b`."""
    for mod in model.modules():
        if hasattr(mod, "lora_B"):
            for ad, lin in mod.lora_B.items():
                if lin is lora_b:
                    return float(mod.scaling[ad])
    raise SignalError("could not find the LoRA layer that owns the chosen B matrix")


def model_fingerprint(model) -> str:
    """Cheap identity of a model's weights: config, parameter names and shapes, a strided sample of each."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = hashlib.sha256(type(base).__name__.encode())
    cfg = base.config.to_dict()
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].float().cpu().numpy()
        name = name.removeprefix("base_model.model.")  # same key for a PeftModel and its injected base model
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def _grad_only_for(model, param: torch.nn.Parameter):
    """Eval mode and requires_grad on `param` alone (backward stops at the chosen layer); restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        param.requires_grad_(True)
        model.eval()
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(training)


# ------------------------------------------------------------------------------------------------------ losses
def sample_losses(model, ids: torch.Tensor, mask: torch.Tensor, task: str, labels: torch.Tensor | None = None,
                  yes_no: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-sample loss of a right-padded batch: SeqRec mean token CE over all real tokens; CTR 2-way CE."""
    decoder, head = backbone(model)
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if task == "seqrec":
        # logits only where a real next token exists (no work on padding), then a per-sample mean
        b_idx, t_idx = torch.nonzero(mask[:, 1:], as_tuple=True)
        logits = head(hidden[b_idx, t_idx]).float()
        ce = F.cross_entropy(logits, ids[b_idx, t_idx + 1], reduction="none")
        total = torch.zeros(len(ids), dtype=ce.dtype, device=ce.device).index_add(0, b_idx, ce)
        return total / torch.bincount(b_idx, minlength=len(ids)).clamp_min(1).to(ce.dtype)
    last = mask.sum(1) - 1
    h = hidden[torch.arange(len(ids), device=ids.device), last]
    logits = head(h).float()[:, list(yes_no)]
    target = (labels == 0).long()  # class 0 = "Yes" (label 1), class 1 = "No" (label 0)
    return F.cross_entropy(logits, target, reduction="none")


def _check_finite(loss: torch.Tensor, rows: np.ndarray, task: str) -> None:
    bad = torch.nonzero(~torch.isfinite(loss.detach())).flatten().tolist()
    if bad:
        k = int(rows[bad[0]])
        raise SignalError(f"non-finite {task} loss ({float(loss[bad[0]].detach())}) for sample {k} "
                          f"({len(bad)} in its batch); check the model weights and dtype")


class _Capture:
    """Forward hook keeping the input and output of one module (the LoRA B linear)."""

    def __init__(self, module: torch.nn.Module):
        self.a = self.out = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, mod, inputs, output):
        self.a, self.out = inputs[0], output

    def close(self):
        self.handle.remove()
        self.a = self.out = None


def _prefix_state(model, lora_b, idx: int, enc: Encoded, task: str, min_len: int):
    """Run the shared prompt prefix once: its key/value cache (detached), the LoRA-A inputs at the target layer
    and, for SeqRec, the summed gradient of the prefix's own token losses (identical for every sample)."""
    c = common_prefix_len(enc.ids)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if c < max(1, int(min_len)) or idx != int(base.config.num_hidden_layers) - 1:
        # exact only for the last layer: below it, the cached prefix keys/values of the layers above the target
        # would also depend on the target's prefix values, and a constant cache would drop that gradient
        return None
    from transformers import DynamicCache

    decoder, head = backbone(model)
    dev = model_device(model)
    ids = torch.as_tensor([enc.ids[0][:c]], device=dev)
    cap = _Capture(lora_b)
    try:
        out = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                      past_key_values=DynamicCache())
        a_pre = cap.a.detach().float()[0]
        g_pre = None
        if task == "seqrec":  # positions 0..c-1 predict the shared tokens 1..c
            ce = F.cross_entropy(head(out.last_hidden_state[0]).float(),
                                 torch.as_tensor(enc.ids[0][1:c + 1], device=dev), reduction="sum")
            (g,) = torch.autograd.grad(ce, cap.out)
            g_pre = g[0].float().T @ a_pre
        kv = [(layer.keys.detach(), layer.values.detach()) for layer in out.past_key_values.layers]
    finally:
        cap.close()
    return {"len": c, "a": a_pre, "grad": g_pre, "kv": kv, "layer": idx, "scaling": _lora_scaling(model, lora_b)}


def _batch_norms_prefix(model, lora_b, enc: Encoded, rows: np.ndarray, task: str, yes_no, pad_id: int,
                        pre: dict) -> np.ndarray:
    """As _batch_norms, but the batch continues from the cached shared prefix. The target layer's prefix values
    are a leaf per sample, so their gradient (what the suffix's attention sends back) is exact per sample."""
    from transformers import DynamicCache

    dev, c, b = model_device(model), pre["len"], len(rows)
    ids, mask = pad_right([enc.ids[k][c:] for k in rows], pad_id, dev)
    data, v_leaf = [], None
    for i, (k_, v_) in enumerate(pre["kv"]):
        k_b, v_b = k_.expand(b, -1, -1, -1), v_.expand(b, -1, -1, -1)
        if i == pre["layer"]:
            v_b = v_leaf = v_b.clone().requires_grad_(True)
        data.append((k_b, v_b))
    decoder, head = backbone(model)
    cap = _Capture(lora_b)
    try:
        full_mask = torch.cat([torch.ones((b, c), dtype=mask.dtype, device=dev), mask], 1)
        hidden = decoder(input_ids=ids, attention_mask=full_mask, past_key_values=DynamicCache(ddp_cache_data=data),
                         use_cache=True).last_hidden_state
        if task == "seqrec":  # suffix token losses; the per-sample mean divides by ALL predicted tokens
            b_idx, t_idx = torch.nonzero(mask[:, 1:], as_tuple=True)
            ce = F.cross_entropy(head(hidden[b_idx, t_idx]).float(), ids[b_idx, t_idx + 1], reduction="none")
            n_tok = torch.as_tensor([len(enc.ids[k]) - 1 for k in rows], device=dev, dtype=ce.dtype)
            loss = torch.zeros(b, dtype=ce.dtype, device=dev).index_add(0, b_idx, ce) / n_tok
        else:
            last = mask.sum(1) - 1
            logits = head(hidden[torch.arange(b, device=dev), last]).float()[:, list(yes_no)]
            labels = torch.as_tensor(enc.labels[rows], device=dev)
            loss = F.cross_entropy(logits, (labels == 0).long(), reduction="none")
        _check_finite(loss, rows, task)
        g, dv = torch.autograd.grad(loss.sum(), [cap.out, v_leaf])
        a = cap.a.detach().float() * mask[..., None].float()
        grads = torch.einsum("bto,btr->bor", g.float(), a)
        g_prefix = dv.float().transpose(1, 2).reshape(b, c, -1) * pre["scaling"]  # d loss / d lora_B output
        grads = grads + torch.einsum("bpo,pr->bor", g_prefix, pre["a"])
        if pre["grad"] is not None:
            grads = grads + pre["grad"][None] / n_tok.float()[:, None, None]
        return grads.flatten(1).norm(dim=1).cpu().numpy().astype(np.float32)
    finally:
        cap.close()


def _packed_state(model, lora_b, idx: int, pre: dict | None) -> dict | None:
    """State of the packed path (goracs.signals.packed): the target is the last layer of a LLaMA decoder; the
    shared prefix (`pre`, may be None = no prefix) is reused from the padded path's prefix run."""
    base = P.base_model(model)
    if not P.packable(model) or idx != int(base.config.num_hidden_layers) - 1:
        return None
    st = {"packed": True, "layer": idx, "scaling": _lora_scaling(model, lora_b), "len": 0, "kv": None,
          "a": None, "grad": None}
    if pre is not None:
        st.update(len=pre["len"], a=pre["a"], grad=pre["grad"],
                  kv=P.PrefixKV([k[0] for k, _ in pre["kv"]], [v[0] for _, v in pre["kv"]]))
    return st


def _plain_head(head, hs: torch.Tensor) -> bool:
    """A float32 linear output head without bias (the closed-form token-loss gradient applies)."""
    return (isinstance(head, torch.nn.Linear) and head.bias is None and head.weight.dtype == torch.float32
            and hs.dtype == torch.float32)


def _ce_and_input_grad(weight: torch.Tensor, hs: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
                       block_bytes: int = 1 << 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropies of logits = hs @ weight.T and the gradient of sum_i row_weight_i * ce_i w.r.t. hs,
    i.e. row_weight_i * (softmax_i - onehot_i) @ weight, with the softmax formed in place in the logits (fewer
    passes over the (rows, vocab) block than autograd's log-softmax and its backward)."""
    step = max(1, int(block_bytes) // (weight.shape[0] * 4))
    ces, grads = [], []
    for s in range(0, len(hs), step):
        y, w = targets[s:s + step, None], row_weight[s:s + step, None]
        z = F.linear(hs[s:s + step], weight)
        z_y = z.gather(1, y)[:, 0]
        top = z.amax(1, keepdim=True)
        torch.exp(z.sub_(top), out=z)
        total = z.sum(1, keepdim=True)
        ces.append(top[:, 0] + total[:, 0].log() - z_y)
        z.mul_(w / total).scatter_add_(1, y, -w)
        grads.append(z @ weight)
    return torch.cat(ces), torch.cat(grads)


def _batch_norms_packed(model, lora_b, enc: Encoded, rows: np.ndarray, task: str, yes_no, st: dict) -> np.ndarray:
    """As _batch_norms, without padding: the suffixes of the batch run packed after the shared prefix (if any);
    layers below the target run without autograd, and the target (last) layer computes its queries, attention
    output, MLP, final norm and head only at the positions that enter a loss (keys and values everywhere)."""
    dev, c, b = model_device(model), st["len"], len(rows)
    dec, head, layers = P.decoder_parts(model)
    pk = P.pack(model, [enc.ids[k][c:] for k in rows], c, dev)
    # SeqRec: the per-sample mean divides by ALL predicted tokens (prefix included)
    n_tok = torch.as_tensor([len(enc.ids[k]) - 1 for k in rows], device=dev, dtype=torch.float32) \
        if task == "seqrec" else None
    if task == "seqrec" and max(pk.lens) == 1 and st["grad"] is not None:
        # every suffix is one token that predicts nothing: the prefix's own token losses are the whole loss
        grads = st["grad"][None] / n_tok[:, None, None]
        return grads.flatten(1).norm(dim=1).cpu().numpy().astype(np.float32)
    h = P.lower_layers(model, pk, st["kv"])
    if task == "seqrec":  # suffix positions with a next token (the prefix's own losses are in st["grad"])
        q_rows = [list(range(n - 1)) for n in pk.lens]
    else:  # the answer position
        q_rows = [[n - 1] for n in pk.lens]
    seg_q = torch.as_tensor(np.repeat(np.arange(b), [len(r) for r in q_rows]), device=dev)
    flat = torch.as_tensor(np.concatenate([np.asarray(r, dtype=np.int64) + o for r, o in zip(q_rows, pk.offs)]),
                           device=dev)
    v_leaf = None
    if c:
        v_leaf = st["kv"].values[-1].expand(b, -1, -1, -1).clone().requires_grad_(True)
    cap = _Capture(lora_b)
    try:
        k_pre = st["kv"].keys[-1] if c else None
        hs = dec.norm(P.last_layer_outputs(layers[-1], h, pk, k_pre, v_leaf, q_rows))
        out, out_grad = None, None
        if task == "seqrec":
            loss = torch.zeros(b, dtype=torch.float32, device=dev)
            if len(flat):
                targets = pk.ids[flat + 1]
                if _plain_head(head, hs):  # closed-form gradient of the token losses w.r.t. the head input
                    ce, out_grad = _ce_and_input_grad(head.weight, hs.detach(), targets, 1.0 / n_tok[seg_q])
                    out = hs
                else:
                    ce = F.cross_entropy(head(hs).float(), targets, reduction="none")
                loss = loss.index_add(0, seg_q, ce) / n_tok
        else:
            labels = torch.as_tensor(enc.labels[rows], device=dev)
            loss = F.cross_entropy(yes_no_logits(head, hs, yes_no), (labels == 0).long(), reduction="none")
        _check_finite(loss, rows, task)
        if cap.out is None:
            raise SignalError("the LoRA B module was never called in the forward pass (adapters disabled?)")
        if out is None and loss.requires_grad:
            out = loss.sum()
        grads = torch.zeros((b, *lora_b.weight.shape), dtype=torch.float32, device=dev)
        if out is not None:
            wrt = [cap.out] + ([v_leaf] if c else [])
            got = torch.autograd.grad(out, wrt, grad_outputs=out_grad, allow_unused=True)
            g, a = got[0], cap.a.detach().float()
            if g is not None:
                g = g.float()
                for j, (o, n) in enumerate(zip(pk.offs, pk.lens)):
                    grads[j] = g[o:o + n].T @ a[o:o + n]
            if c and got[1] is not None:  # what each sample's attention sends back to the prefix values
                g_prefix = got[1].float().transpose(1, 2).reshape(b, c, -1) * st["scaling"]
                grads = grads + torch.einsum("bpo,pr->bor", g_prefix, st["a"])
        if st["grad"] is not None:
            grads = grads + st["grad"][None] / n_tok[:, None, None]
        return grads.flatten(1).norm(dim=1).cpu().numpy().astype(np.float32)
    finally:
        cap.close()


def _batch_norms(model, lora_b: torch.nn.Module, enc: Encoded, rows: np.ndarray, task: str,
                 yes_no, pad_id: int, prefix: dict | None = None) -> np.ndarray:
    """Gradient norms of the samples `rows` from one forward and one backward pass (closed form)."""
    if prefix is not None and prefix.get("packed"):
        return _batch_norms_packed(model, lora_b, enc, rows, task, yes_no, prefix)
    if prefix is not None:
        return _batch_norms_prefix(model, lora_b, enc, rows, task, yes_no, pad_id, prefix)
    dev = model_device(model)
    ids, mask = pad_right([enc.ids[k] for k in rows], pad_id, dev)
    labels = torch.as_tensor(enc.labels[rows], device=dev) if enc.labels is not None else None
    cap = _Capture(lora_b)
    try:
        loss = sample_losses(model, ids, mask, task, labels, yes_no)
        _check_finite(loss, rows, task)
        if cap.out is None:
            raise SignalError("the LoRA B module was never called in the forward pass (adapters disabled?)")
        (g,) = torch.autograd.grad(loss.sum(), cap.out)
        a = cap.a.detach().float() * mask[..., None].float()
        grads = torch.einsum("bto,btr->bor", g.float(), a)
        return grads.flatten(1).norm(dim=1).cpu().numpy().astype(np.float32)
    finally:
        cap.close()


# ------------------------------------------------------------------------------------------------- public API
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
                res[b] = _batch_norms(model, lora_b, enc, rows[b], task, yes_no, pad_id, pre)
                bar.update(len(b))
            outs.append(res)
        return outs

    with _grad_only_for(model, lora_b.weight):
        if shared_prefix and int(shared_prefix) > 0:
            pre = _prefix_state(model, lora_b, idx, enc, task, int(shared_prefix))
        if packed:
            pre = _packed_state(model, lora_b, idx, pre) or pre
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
    with _grad_only_for(model, lora_b.weight):
        for k in tqdm(range(len(enc.ids)), desc=f"grad norms loop ({task})", disable=not progress):
            ids, mask = pad_right([enc.ids[k]], pad_id, dev)
            labels = torch.as_tensor(enc.labels[[k]], device=dev) if enc.labels is not None else None
            loss = sample_losses(model, ids, mask, task, labels, yes_no)
            _check_finite(loss, np.array([k]), task)
            lora_b.weight.grad = None
            loss.sum().backward()
            out[k] = float(lora_b.weight.grad.float().norm())
        lora_b.weight.grad = None
    return out


# ------------------------------------------------------------------------------------------ data-parallel CLI
def _read_frame(path: str):
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise SignalError(f"data file does not exist: {p}")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix in (".jsonl", ".json"):
        return pd.read_json(p, lines=p.suffix == ".jsonl")
    raise SignalError(f"unsupported data file type {p.suffix!r} (use .parquet or .jsonl): {p}")


def main(argv: list[str] | None = None) -> int:
    """CLI: compute gradient norms for a split file, sharded across `accelerate launch` processes."""
    import argparse

    from accelerate import PartialState

    from goracs.models import load_model

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--data", required=True, help="split as .parquet or .jsonl (instruction, input, output, label)")
    ap.add_argument("--task", required=True, choices=["seqrec", "ctr"])
    ap.add_argument("--model", default="smollm2_135m", help="smollm2_135m, llama7b or tiny")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--load-in-8bit", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="tiny model init and LoRA A init")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--shard-dir", required=True)
    ap.add_argument("--out", required=True, help="where the assembled (N,) float32 .npy goes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU (gloo) even when CUDA is available")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    use_cpu = args.cpu or not torch.cuda.is_available() or \
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=use_cpu)
    device = str(state.device)
    df = _read_frame(args.data)
    model, tok = load_model(args.model, args.model_path, dtype=args.dtype, load_in_8bit=args.load_in_8bit,
                            device=device, seed=args.seed)
    model = ensure_lora(model, lora_seed=args.seed)
    log.info("rank %d of %d on %s", state.process_index, state.num_processes, device)
    kw = dict(layer=args.layer, batch_size=args.batch_size, max_len=args.max_len, shard_dir=args.shard_dir,
              shard_size=args.shard_size, lora_seed=args.seed)
    grad_norms(model, tok, df, args.task, rank=state.process_index, world_size=state.num_processes,
               progress=state.is_local_main_process, **kw)
    state.wait_for_everyone()
    if state.is_main_process:
        norms = grad_norms(model, tok, df, args.task, progress=False, **kw)
        if norms is None:
            raise SignalError(f"some gradient shards in {args.shard_dir} are missing after all processes finished")
        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, norms)
        log.info("wrote %d gradient norms to %s", len(norms), args.out)
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
