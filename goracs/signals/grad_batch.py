"""Per-sample gradient norms of one batch w.r.t. the LoRA B matrix, in closed form: the padded Hugging Face
forward, the same continuing from a cached shared prompt prefix, and the packed forward (goracs.signals.packed);
see goracs.signals.grads for the method."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from goracs.runtime import model_device
from goracs.signals import packed as P
from goracs.signals.common import Encoded, SignalError, backbone, common_prefix_len, yes_no_logits
from goracs.signals.lora_b import Capture, lora_scaling
from goracs.text import pad_right


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


def check_finite(loss: torch.Tensor, rows: np.ndarray, task: str) -> None:
    """Fail, naming the first sample, when a batch holds a non-finite loss."""
    bad = torch.nonzero(~torch.isfinite(loss.detach())).flatten().tolist()
    if bad:
        k = int(rows[bad[0]])
        raise SignalError(f"non-finite {task} loss ({float(loss[bad[0]].detach())}) for sample {k} "
                          f"({len(bad)} in its batch); check the model weights and dtype")


def prefix_state(model, lora_b, idx: int, enc: Encoded, task: str, min_len: int):
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
    cap = Capture(lora_b)
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
    return {"len": c, "a": a_pre, "grad": g_pre, "kv": kv, "layer": idx, "scaling": lora_scaling(model, lora_b)}


def batch_norms_prefix(model, lora_b, enc: Encoded, rows: np.ndarray, task: str, yes_no, pad_id: int,
                        pre: dict) -> np.ndarray:
    """As batch_norms, but the batch continues from the cached shared prefix. The target layer's prefix values
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
    cap = Capture(lora_b)
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
        check_finite(loss, rows, task)
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


def packed_state(model, lora_b, idx: int, pre: dict | None) -> dict | None:
    """State of the packed path (goracs.signals.packed): the target is the last layer of a LLaMA decoder; the
    shared prefix (`pre`, may be None = no prefix) is reused from the padded path's prefix run."""
    base = P.base_model(model)
    if not P.packable(model) or idx != int(base.config.num_hidden_layers) - 1:
        return None
    st = {"packed": True, "layer": idx, "scaling": lora_scaling(model, lora_b), "len": 0, "kv": None,
          "a": None, "grad": None}
    if pre is not None:
        st.update(len=pre["len"], a=pre["a"], grad=pre["grad"],
                  kv=P.PrefixKV([k[0] for k, _ in pre["kv"]], [v[0] for _, v in pre["kv"]]))
    return st


def plain_head(head, hs: torch.Tensor) -> bool:
    """A float32 linear output head without bias (the closed-form token-loss gradient applies)."""
    return (isinstance(head, torch.nn.Linear) and head.bias is None and head.weight.dtype == torch.float32
            and hs.dtype == torch.float32)


def ce_and_input_grad(weight: torch.Tensor, hs: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
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


def batch_norms_packed(model, lora_b, enc: Encoded, rows: np.ndarray, task: str, yes_no, st: dict) -> np.ndarray:
    """As batch_norms, without padding: the suffixes of the batch run packed after the shared prefix (if any);
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
    cap = Capture(lora_b)
    try:
        k_pre = st["kv"].keys[-1] if c else None
        hs = dec.norm(P.last_layer_outputs(layers[-1], h, pk, k_pre, v_leaf, q_rows))
        out, out_grad = None, None
        if task == "seqrec":
            loss = torch.zeros(b, dtype=torch.float32, device=dev)
            if len(flat):
                targets = pk.ids[flat + 1]
                if plain_head(head, hs):  # closed-form gradient of the token losses w.r.t. the head input
                    ce, out_grad = ce_and_input_grad(head.weight, hs.detach(), targets, 1.0 / n_tok[seg_q])
                    out = hs
                else:
                    ce = F.cross_entropy(head(hs).float(), targets, reduction="none")
                loss = loss.index_add(0, seg_q, ce) / n_tok
        else:
            labels = torch.as_tensor(enc.labels[rows], device=dev)
            loss = F.cross_entropy(yes_no_logits(head, hs, yes_no), (labels == 0).long(), reduction="none")
        check_finite(loss, rows, task)
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


def batch_norms(model, lora_b: torch.nn.Module, enc: Encoded, rows: np.ndarray, task: str,
                yes_no, pad_id: int, prefix: dict | None = None) -> np.ndarray:
    """Gradient norms of the samples `rows` from one forward and one backward pass (closed form)."""
    if prefix is not None and prefix.get("packed"):
        return batch_norms_packed(model, lora_b, enc, rows, task, yes_no, prefix)
    if prefix is not None:
        return batch_norms_prefix(model, lora_b, enc, rows, task, yes_no, pad_id, prefix)
    dev = model_device(model)
    ids, mask = pad_right([enc.ids[k] for k in rows], pad_id, dev)
    labels = torch.as_tensor(enc.labels[rows], device=dev) if enc.labels is not None else None
    cap = Capture(lora_b)
    try:
        loss = sample_losses(model, ids, mask, task, labels, yes_no)
        check_finite(loss, rows, task)
        if cap.out is None:
            raise SignalError("the LoRA B module was never called in the forward pass (adapters disabled?)")
        (g,) = torch.autograd.grad(loss.sum(), cap.out)
        a = cap.a.detach().float() * mask[..., None].float()
        grads = torch.einsum("bto,btr->bor", g.float(), a)
        return grads.flatten(1).norm(dim=1).cpu().numpy().astype(np.float32)
    finally:
        cap.close()
