"""Padding-free ("packed") forward of a LLaMA decoder that continues from a shared prompt prefix.

The batched gradient norms (goracs.signals.grads) spend almost all their CPU time in the dense projections of the
decoder layers, so every token that is not needed costs the same as one that is. This module runs the tokens of a
batch as one (N, hidden) sequence with no padding rows: the projections, norms and MLPs see only real tokens, and
attention runs per sample (query i of a sample sees the cached prefix and its own tokens up to i). It calls the
model's own modules (norms, projections with their LoRA adapters, MLPs, rotary table), so the arithmetic is the
model's; only the padding, the batch layout and the attention call differ from the Hugging Face forward.

Supported: decoder layers of the LLaMA class (SmolLM2, LLaMA-7B, the tiny test model). Other models use the
padded Hugging Face path in grads.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SUPPORTED_LAYERS = ("LlamaDecoderLayer",)


def base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packable(model) -> bool:
    """True when the packed forward reproduces the model's own forward (a LLaMA decoder in eval mode)."""
    base = base_model(model)
    dec = getattr(base, "model", None)
    cfg = getattr(base, "config", None)
    if dec is None or cfg is None or not all(hasattr(dec, a) for a in ("embed_tokens", "layers", "norm",
                                                                           "rotary_emb")):
        return False
    layers = list(dec.layers)[: int(cfg.num_hidden_layers)]
    if not layers or any(type(layer).__name__ not in SUPPORTED_LAYERS for layer in layers):
        return False
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return False
    return True


def decoder_parts(model):
    """(decoder, output head, decoder layers) of a packable model."""
    base = base_model(model)
    dec = base.model
    return dec, base.get_output_embeddings(), list(dec.layers)[: int(base.config.num_hidden_layers)]


@dataclass
class Pack:
    """The suffix tokens of a batch, one after the other: ids (N,), per-sample lengths and offsets, rotary table,
    and the additive causal mask over [prefix; own tokens] for the longest sample (shared by every layer)."""

    ids: torch.Tensor
    lens: list[int]
    offs: list[int]
    cos: torch.Tensor
    sin: torch.Tensor
    prefix: int
    bias: torch.Tensor


def pack(model, seqs: list[list[int]], prefix: int, device) -> Pack:
    """Pack token lists that continue a prefix of `prefix` tokens (their positions start at `prefix`)."""
    dec = base_model(model).model
    lens = [len(s) for s in seqs]
    if min(lens) < 1:
        raise ValueError("every packed sequence needs at least one token")
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int).tolist()
    ids = torch.as_tensor(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]), device=device)
    pos = torch.as_tensor(np.concatenate([np.arange(prefix, prefix + n) for n in lens]), device=device)
    probe = dec.embed_tokens.weight[:1]
    cos, sin = dec.rotary_emb(probe, pos[None])
    longest = max(lens)
    bias = torch.zeros((longest, prefix + longest), dtype=probe.dtype, device=device)
    bias.masked_fill_(~_mask(longest, prefix, longest, device), float("-inf"))
    return Pack(ids, lens, offs, cos[0], sin[0], int(prefix), bias)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LLaMA rotary embedding of x (n, heads, head_dim) with cos/sin (n, head_dim)."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _mask(n_rows: int, prefix: int, n_keys_self: int, device) -> torch.Tensor:
    """Boolean (n_rows, prefix + n_keys_self): query i may see every prefix key and its own keys 0..i."""
    j = torch.arange(prefix + n_keys_self, device=device)
    i = torch.arange(n_rows, device=device)
    return j[None, :] <= (prefix + i)[:, None]


class PrefixKV:
    """Keys (after rotary) and values of the shared prefix per layer, as (kv_heads, prefix, head_dim)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values
        self.len = int(keys[0].shape[1]) if keys else 0


@torch.no_grad()
def prefix_cache(model, ids: list[int], device) -> PrefixKV:
    """Run the prefix `ids` once through the model's own decoder and keep every layer's keys and values."""
    from transformers import DynamicCache

    dec = base_model(model).model
    t = torch.as_tensor([list(ids)], device=device)
    out = dec(input_ids=t, attention_mask=torch.ones_like(t), use_cache=True, past_key_values=DynamicCache())
    layers = out.past_key_values.layers
    return PrefixKV([layer.keys[0] for layer in layers], [layer.values[0] for layer in layers])


def _attention(attn, q, k, v, pk: Pack, k_pre, v_pre, rows=None):
    """Per-sample causal attention over [prefix; own tokens]. q (Nq, H, d) holds, for each sample, the query
    rows listed in `rows` (per-sample local indices; None = every token); k, v (N, KVH, d) every token.
    v_pre may be a per-sample tensor (B, KVH, c, d) (the leaf that collects each sample's prefix-value
    gradient) or one shared (KVH, c, d). Returns (Nq, H * d).

    Written out as scaled scores + additive mask, softmax, weighted values (what the model's eager attention
    does): on one CPU thread this costs less than the SDPA kernels for these short, single-sample calls."""
    c = pk.prefix
    n_heads, n_kv = q.shape[1], k.shape[1]
    group = n_heads // n_kv
    bias = pk.bias.to(q.dtype)
    out, qo = [], 0
    for b, (o, n) in enumerate(zip(pk.offs, pk.lens)):
        sel = None if rows is None else rows[b]
        nq = n if sel is None else len(sel)
        if nq == 0:
            continue
        qb = q[qo:qo + nq].transpose(0, 1)  # (H, nq, d)
        qo += nq
        kb = k[o:o + n].transpose(0, 1)
        vb = v[o:o + n].transpose(0, 1)
        if c:
            vp = v_pre if v_pre.dim() == 3 else v_pre[b]
            kb, vb = torch.cat([k_pre, kb], 1), torch.cat([vp, vb], 1)
        m = bias[:n, :c + n] if sel is None else bias[torch.as_tensor(sel, device=q.device), :c + n]
        # grouped-query attention: the `group` query heads of one key/value head attend together
        qg = qb.reshape(n_kv, group * nq, qb.shape[-1])
        scores = torch.baddbmm(m.repeat(group, 1)[None], qg, kb.transpose(1, 2), alpha=attn.scaling)
        probs = torch.softmax(scores.float(), dim=-1).to(vb.dtype)
        ob = torch.bmm(probs, vb)
        out.append(ob.reshape(n_heads, nq, -1).transpose(0, 1).reshape(nq, -1))
    return torch.cat(out, 0)


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    """The LLaMA MLP; without autograd the activation and the gating product are done in place."""
    if torch.is_grad_enabled():
        return mlp(x)
    g = mlp.act_fn(mlp.gate_proj(x))
    return mlp.down_proj(g.mul_(mlp.up_proj(x)))


def layer_forward(layer, h: torch.Tensor, pk: Pack, kv: PrefixKV | None, idx: int) -> torch.Tensor:
    """One decoder layer over the packed tokens (no gradient needed)."""
    attn = layer.self_attn
    d = attn.head_dim
    x = layer.input_layernorm(h)
    n = x.shape[0]
    q = _rope(attn.q_proj(x).view(n, -1, d), pk.cos, pk.sin)
    k = _rope(attn.k_proj(x).view(n, -1, d), pk.cos, pk.sin)
    v = attn.v_proj(x).view(n, -1, d)
    k_pre = kv.keys[idx] if kv is not None and pk.prefix else None
    v_pre = kv.values[idx] if kv is not None and pk.prefix else None
    h = h + attn.o_proj(_attention(attn, q, k, v, pk, k_pre, v_pre))
    return h + _mlp(layer.mlp, layer.post_attention_layernorm(h))


@torch.no_grad()
def lower_layers(model, pk: Pack, kv: PrefixKV | None) -> torch.Tensor:
    """Hidden states of the packed tokens after every decoder layer but the last (no autograd)."""
    dec, _, layers = decoder_parts(model)
    h = dec.embed_tokens(pk.ids)
    for i, layer in enumerate(layers[:-1]):
        h = layer_forward(layer, h, pk, kv, i)
    return h


def last_layer_outputs(layer, h: torch.Tensor, pk: Pack, k_pre, v_pre, rows: list[list[int]]) -> torch.Tensor:
    """The last decoder layer evaluated only at the query rows `rows` (per sample, local indices); keys and
    values at every token. Returns the layer output (before the final norm) at those rows, sample after sample.
    Autograd records whatever requires grad (the LoRA B of v_proj, the per-sample prefix values)."""
    attn = layer.self_attn
    d = attn.head_dim
    x = layer.input_layernorm(h)
    n = x.shape[0]
    flat = torch.as_tensor(np.concatenate([np.asarray(r, dtype=np.int64) + o for r, o in zip(rows, pk.offs)]),
                           device=h.device)
    k = _rope(attn.k_proj(x).view(n, -1, d), pk.cos, pk.sin)
    v = attn.v_proj(x).view(n, -1, d)
    q = _rope(attn.q_proj(x[flat]).view(len(flat), -1, d), pk.cos[flat], pk.sin[flat])
    hs = h[flat] + attn.o_proj(_attention(attn, q, k, v, pk, k_pre, v_pre, rows=rows))
    return hs + _mlp(layer.mlp, layer.post_attention_layernorm(hs))


@torch.no_grad()
def answer_logits(model, seqs: list[list[int]], answer_ids, batch_size: int = 8, shared_prefix: int = 16,
                  progress: bool = False, desc: str = "answer logits") -> torch.Tensor:
    """(N, len(answer_ids)) float32 logits of the answer tokens at the last position of each token list: the CTR
    scores (P(Yes) = softmax over the Yes/No logits) of the evaluation, the validation loss and EL2N.

    The prompt prefix that every list shares runs once (when it has at least `shared_prefix` tokens; 0 = never),
    the rest of each list runs without padding in batches of similar length, and the last layer, the final norm
    and the head run only at the last position, for the answer rows of the head alone: the same logits as the
    model's own padded forward (within float rounding), at the cost of the tokens that differ between samples."""
    from tqdm.auto import tqdm

    from goracs.signals.common import common_prefix_len, length_batches, yes_no_logits

    if not seqs:
        raise ValueError("no token lists to score")
    dev = next(base_model(model).parameters()).device
    dec, head, layers = decoder_parts(model)
    c = common_prefix_len(seqs)
    kv = prefix_cache(model, seqs[0][:c], dev) if shared_prefix > 0 and c >= max(1, int(shared_prefix)) else None
    c = c if kv is not None else 0
    out = torch.empty((len(seqs), len(answer_ids)), dtype=torch.float32)
    with tqdm(total=len(seqs), desc=desc, disable=not progress, leave=False) as bar:
        for rows in length_batches([len(s) for s in seqs], batch_size):
            pk = pack(model, [seqs[k][c:] for k in rows], c, dev)
            h = lower_layers(model, pk, kv)
            k_pre = kv.keys[-1] if kv is not None else None
            v_pre = kv.values[-1] if kv is not None else None
            hs = dec.norm(last_layer_outputs(layers[-1], h, pk, k_pre, v_pre, [[n - 1] for n in pk.lens]))
            out[torch.as_tensor(rows)] = yes_no_logits(head, hs, answer_ids).cpu()
            bar.update(len(rows))
    return out
