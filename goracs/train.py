"""LoRA fine-tuning on a coreset: SeqRec (BIGRec-style, loss on prompt and response) and CTR (TALLRec-style,
loss on the answer only), with an explicit evaluation cadence, early stopping on validation loss, the best
adapter kept and saved with `save_pretrained`, and accelerate for multi-process (DDP) runs."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goracs.evaluate.common import (CTR_ANSWERS, DataError, check_samples, check_task, encode_prompt_answer,
                                    lm_forward, model_device, pad_batch, set_threads, to_dict, truncate)
from goracs.io import config_hash, write_json
from goracs.prompts import render_prompt

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# every key train_lora reads, with its default (configs/train/default.yaml sets them all explicitly)
DEFAULTS: dict[str, Any] = {
    "lr": 3e-4, "epochs": 2, "batch_size": 8, "micro_batch_size": 4, "cutoff_len": 256, "truncation": "left",
    "eval_every_steps": None, "patience": 3, "min_delta": 0.0, "warmup_steps": 0, "scheduler": "constant",
    "weight_decay": 0.0, "max_grad_norm": 1.0, "eval_batch_size": 8, "val_max_samples": None,
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    "seed": 0, "device": "cpu", "mixed_precision": "no", "gradient_checkpointing": False, "resume": True,
    "num_threads": None, "add_eos": True, "max_steps": None, "task_overrides": {},
    "ctr_loss": "two_way", "eval_every_steps_above_n": None,
}
CTR_LOSSES = ("two_way", "token")


class TrainError(RuntimeError):
    """Fine-tuning that cannot proceed or produced an unusable adapter."""


def train_config(cfg: Any, task: str) -> dict[str, Any]:
    """The effective training config: defaults, then cfg, then cfg.task_overrides[task]."""
    c = copy.deepcopy(DEFAULTS)
    user = to_dict(cfg)
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        log.debug("train config keys not used by train_lora: %s", unknown)
    for k, v in user.items():
        if k == "lora" and isinstance(v, dict):
            c["lora"] = {**c["lora"], **v}
        else:
            c[k] = v
    over = (c.get("task_overrides") or {}).get(task) or {}
    for k, v in over.items():
        if k == "lora":
            c["lora"] = {**c["lora"], **v}
        else:
            c[k] = v
    if c["truncation"] not in ("left", "right"):
        raise TrainError(f"train.truncation must be 'left' or 'right', got {c['truncation']!r}")
    if int(c["micro_batch_size"]) < 1 or int(c["batch_size"]) < 1:
        raise TrainError("train.batch_size and train.micro_batch_size must be >= 1")
    if c["ctr_loss"] not in CTR_LOSSES:
        raise TrainError(f"train.ctr_loss must be one of {CTR_LOSSES}, got {c['ctr_loss']!r}")
    if c["scheduler"] not in ("constant", "linear"):
        raise TrainError(f"train.scheduler must be 'constant' or 'linear', got {c['scheduler']!r}")
    above = c["eval_every_steps_above_n"]
    if above is not None and (not isinstance(above, dict) or set(above) != {"n", "steps"}):
        raise TrainError("train.eval_every_steps_above_n must be null or {n: <samples>, steps: <optimizer steps>}, "
                         f"got {above!r}")
    return c


def eval_cadence(c: dict[str, Any], n_train: int, steps_per_epoch: int) -> int:
    """Optimizer steps between validations: eval_every_steps (null = once per epoch), or
    eval_every_steps_above_n.steps when the coreset has more than eval_every_steps_above_n.n samples (the authors'
    CTR rule: every 10 steps up to 128 samples, else every 20)."""
    above = c.get("eval_every_steps_above_n")
    if above is not None and n_train > int(above["n"]):
        return max(1, int(above["steps"]))
    return max(1, int(c["eval_every_steps"])) if c["eval_every_steps"] else steps_per_epoch


def load_config_file(path: str | os.PathLike) -> Any:
    """Load a YAML config and merge its Hydra-style `defaults` list (sibling files, then the file itself)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.exists():
        raise TrainError(f"config file not found: {path}")
    raw = OmegaConf.load(path)
    defaults = raw.pop("defaults", None) or []
    merged = OmegaConf.create({})
    self_done = False
    for d in defaults:
        if d == "_self_":
            merged, self_done = OmegaConf.merge(merged, raw), True
        else:
            merged = OmegaConf.merge(merged, load_config_file(path.with_name(f"{d}.yaml")))
    return merged if self_done else OmegaConf.merge(merged, raw)


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
    for idx, ins, inp, out in zip(df.index, df["instruction"], df["input"], df["output"]):
        p, a = encode_prompt_answer(tokenizer, render_prompt(ins, inp, df), out)  # the frame's prompt template
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


def _collate(pad_id: int):
    def fn(items):
        idx = torch.tensor([i for i, _, _ in items], dtype=torch.long)
        ids, mask, labels = pad_batch([s for _, s, _ in items], pad_id, "left", [l for _, _, l in items])
        return {"idx": idx, "input_ids": ids, "attention_mask": mask, "labels": labels}
    return fn


def _token_losses(model, batch: dict, yes_no: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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


def _per_sample(ce: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
            ce, m = _token_losses(model, {"input_ids": b_ids.to(dev), "attention_mask": b_mask.to(dev),
                                          "labels": b_lab.to(dev)}, yes_no)
            out[s:s + batch_size] = _per_sample(ce, m).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _data_key(df) -> str:
    return config_hash([df["instruction"].tolist(), df["input"].tolist(), df["output"].tolist()])


def _check_adapter(adapter_dir: Path, expect_trained: bool) -> dict[str, Any]:
    """Fail when the saved adapter is missing or holds no LoRA tensors; return its tensor counts."""
    files = [adapter_dir / f for f in ADAPTER_WEIGHTS if (adapter_dir / f).exists()]
    if not (adapter_dir / "adapter_config.json").exists() or not files:
        raise TrainError(f"no adapter saved in {adapter_dir} (adapter_config.json / adapter_model.* missing)")
    f = files[0]
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(f))
    else:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    lora = {k: v for k, v in sd.items() if "lora_" in k}
    numel = sum(v.numel() for v in lora.values())
    if not lora or numel == 0:
        raise TrainError(f"saved adapter {f} is empty ({len(sd)} tensors, none LoRA): the adapter state dict "
                         "was lost on save")
    b_norm = float(sum(v.float().norm() ** 2 for k, v in lora.items() if "lora_B" in k) ** 0.5)
    if expect_trained and b_norm == 0.0:
        warnings.warn(f"adapter {f}: every lora_B is zero, the adapter is the identity", stacklevel=2)
    return {"tensors": len(lora), "numel": int(numel), "lora_B_norm": b_norm}


def _lora_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def train_lora(model, tokenizer, train_df, val_df, task: str, cfg: Any, out_dir: str | os.PathLike,
               logger=None, init_adapter: str | os.PathLike | None = None):
    """Fine-tune LoRA on train_df with early stopping on val_df; return (peft_model, report).

    The best adapter (lowest validation loss) is saved under out_dir/adapter and checked non-empty; a
    finished run with the same config and data is loaded instead of retrained (cfg.resume). `model` is
    wrapped in place by peft when it is not already a PeftModel: with `init_adapter` (a PEFT LoRA folder, e.g.
    the authors' instruction-tuned alpaca-tallrec / alpaca-bigrec) training starts from that adapter's weights
    and its LoRA settings, else from a fresh LoRA (B = 0) with cfg.lora.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import PeftModel, set_peft_model_state_dict
    from tqdm.auto import tqdm

    from goracs.models import add_lora

    c = train_config(cfg, task)
    check_samples(train_df, task, "train samples (coreset)")
    check_samples(val_df, task, "validation samples")
    set_threads(c["num_threads"])
    out_dir = Path(out_dir)
    adapter_dir = out_dir / "adapter"
    report_path = out_dir / "train_report.json"
    key_cfg = {k: v for k, v in c.items() if k not in ("device", "resume", "num_threads", "task_overrides")}
    from goracs.models import adapter_fingerprint

    if init_adapter is not None and isinstance(model, PeftModel):
        raise TrainError("init_adapter needs the base model, not a model that already carries an adapter")
    key = config_hash({"task": task, "cfg": key_cfg, "train": _data_key(train_df), "val": _data_key(val_df),
                       "model": getattr(getattr(model, "config", None), "_name_or_path", ""),
                       "init_adapter": adapter_fingerprint(init_adapter)})

    if c["resume"] and report_path.exists() and (adapter_dir / "adapter_config.json").exists():
        old = json.loads(report_path.read_text())
        if old.get("key") == key:
            _check_adapter(adapter_dir, expect_trained=False)
            log.info("adapter already trained in %s: loading it", adapter_dir)
            if isinstance(model, PeftModel):
                raise TrainError("resume needs the base model, not a PeftModel")
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
            return peft_model, {**old, "resumed": True}
        log.warning("%s holds a run with another config or data: retraining", out_dir)

    t0 = time.time()
    world_guess = int(os.environ.get("WORLD_SIZE", "1"))
    micro = int(c["micro_batch_size"])
    accum = max(1, int(c["batch_size"]) // (micro * world_guess))
    from accelerate.utils import DistributedType

    acc = Accelerator(cpu=str(c["device"]) == "cpu", mixed_precision=c["mixed_precision"])
    world = acc.num_processes
    is_ds = acc.distributed_type == DistributedType.DEEPSPEED
    if is_ds:  # the engine accumulates itself; elsewhere accumulation is done here (acc.backward would rescale)
        acc.gradient_accumulation_steps = accum
    # FSDP / DeepSpeed: parameters may be sharded, so the best adapter is gathered from the full state dict
    sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    set_seed(int(c["seed"]))

    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=c["gradient_checkpointing"])
    elif c["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if isinstance(model, PeftModel):
        peft_model = model
    elif init_adapter is not None:
        from goracs.models import load_adapter

        peft_model = load_adapter(model, init_adapter, trainable=True)
    else:
        lc = c["lora"]
        peft_model = add_lora(model, r=int(lc["r"]), alpha=int(lc["alpha"]), dropout=float(lc["dropout"]),
                              target_modules=tuple(lc["target_modules"]))
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)

    yes_no = ctr_yes_no(tokenizer, train_df, c, task)
    tr_ids, tr_lab, n_trunc = encode_samples(tokenizer, train_df, task, c["cutoff_len"], c["truncation"],
                                             c["add_eos"], c["ctr_loss"], yes_no)
    val = val_df
    if c["val_max_samples"] and len(val) > int(c["val_max_samples"]):
        val = val.sample(n=int(c["val_max_samples"]), random_state=int(c["seed"]))
    va_ids, va_lab, n_trunc_val = encode_samples(tokenizer, val, task, c["cutoff_len"], c["truncation"],
                                                 c["add_eos"], c["ctr_loss"], yes_no)
    if n_trunc:
        log.warning("%d of %d training samples truncated to %d tokens (%s)", n_trunc, len(tr_ids),
                    c["cutoff_len"], c["truncation"])
    collate = _collate(tokenizer.pad_token_id)
    g = torch.Generator().manual_seed(int(c["seed"]))
    train_dl = torch.utils.data.DataLoader(list(zip(range(len(tr_ids)), tr_ids, tr_lab)), batch_size=micro,
                                           shuffle=True, generator=g, collate_fn=collate)
    val_dl = torch.utils.data.DataLoader(list(zip(range(len(va_ids)), va_ids, va_lab)),
                                         batch_size=int(c["eval_batch_size"]), shuffle=False, collate_fn=collate)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=float(c["lr"]),
                            weight_decay=float(c["weight_decay"]))
    ddp_model, opt, train_dl, val_dl = acc.prepare(peft_model, opt, train_dl, val_dl)
    unwrapped = acc.unwrap_model(ddp_model)

    micro_per_epoch = len(train_dl)
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total_steps = steps_per_epoch * int(c["epochs"])
    if c["max_steps"]:
        total_steps = min(total_steps, int(c["max_steps"]))
    warm = int(c["warmup_steps"])

    # the Hugging Face Trainer's schedules, as the authors ran them: the factor is step / warm-up during the warm-up
    # (so the first step has learning rate 0), then constant or a linear decay to 0 at the last step
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    sched = (get_linear_schedule_with_warmup(opt, warm, total_steps) if c["scheduler"] == "linear"
             else get_constant_schedule_with_warmup(opt, warm))
    eval_every = eval_cadence(c, len(train_df), steps_per_epoch)

    def val_loss() -> float:
        ddp_model.eval()
        losses = []
        with torch.no_grad():
            for batch in val_dl:
                ce, m = _token_losses(ddp_model, batch, yes_no)
                losses.append(acc.gather_for_metrics(_per_sample(ce, m)))
        ddp_model.train()
        return float(torch.cat(losses).mean())

    history: list[dict[str, Any]] = []
    init_loss = val_loss()
    history.append({"step": 0, "epoch": 0.0, "val_loss": init_loss})
    if logger is not None and acc.is_main_process:
        logger.log_metrics({"val/loss": init_loss}, step=0)
    best, best_step, best_state, bad_evals = math.inf, 0, None, 0
    step, stopped_early, running, running_n = 0, False, 0.0, 0
    ddp_model.train()
    bar = tqdm(total=total_steps, desc=f"train {task}", disable=not acc.is_local_main_process)
    done = False
    for epoch in range(int(c["epochs"])):
        for i, batch in enumerate(train_dl):
            last_micro = (i + 1) % accum == 0 or i + 1 == micro_per_epoch
            n_micro = accum if (i // accum + 1) * accum <= micro_per_epoch else micro_per_epoch % accum
            ctx = acc.no_sync(ddp_model) if not last_micro and world > 1 and not is_ds else _nullcontext()
            with ctx:
                ce, m = _token_losses(ddp_model, batch, yes_no)
                loss = ce.sum() / m.sum().clamp(min=1)
                # DeepSpeed's engine divides by its own accumulation steps and steps on its boundaries
                acc.backward(loss if is_ds else loss / n_micro)
            running += float(loss.detach())
            running_n += 1
            if not last_micro:
                continue
            if c["max_grad_norm"]:
                acc.clip_grad_norm_(ddp_model.parameters(), float(c["max_grad_norm"]))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % eval_every == 0 or step == total_steps:
                tl = running / max(1, running_n)
                running, running_n = 0.0, 0
                vl = val_loss()
                rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_loss": tl, "val_loss": vl}
                history.append(rec)
                bar.set_postfix(train=f"{tl:.3f}", val=f"{vl:.3f}")
                if logger is not None and acc.is_main_process:
                    logger.log_metrics({"train/loss": tl, "val/loss": vl, "train/lr": sched.get_last_lr()[0],
                                        "train/epoch": rec["epoch"]}, step=step)
                if vl < best - float(c["min_delta"]):
                    best, best_step, bad_evals = vl, step, 0
                    best_state = _snapshot(acc, ddp_model, unwrapped, sharded)
                else:
                    bad_evals += 1
                    if c["patience"] is not None and bad_evals >= int(c["patience"]):
                        stopped_early, done = True, True
            if step >= total_steps:
                done = True
            if done:
                break
        if done:
            break
    bar.close()
    if best_state is None:
        raise TrainError("no training step was taken (no samples or epochs = 0)")
    if not sharded:
        set_peft_model_state_dict(unwrapped, best_state)

    adapter_info: dict[str, Any] = {}
    if acc.is_main_process:
        import tempfile
        import uuid

        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob(".adapter.*.tmp"):  # left by a killed run
            if old.stat().st_mtime < time.time() - 24 * 3600:
                shutil.rmtree(old, ignore_errors=True)
        # a unique temporary folder, renamed into place; an older adapter is moved aside first (never removed in
        # place while another process may be reading it)
        tmp = Path(tempfile.mkdtemp(prefix=".adapter.", suffix=".tmp", dir=out_dir))
        try:
            if sharded:  # the in-memory model holds the last weights; save the gathered best ones
                unwrapped.save_pretrained(str(tmp), state_dict=best_state)
            else:
                unwrapped.save_pretrained(str(tmp))
            adapter_info = _check_adapter(tmp, expect_trained=True)
            if adapter_dir.exists():
                aside = out_dir / f".adapter.{uuid.uuid4().hex[:8]}.old.tmp"
                os.replace(adapter_dir, aside)
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(tmp, adapter_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    report = {
        "task": task, "key": key, "n_train": len(train_df), "n_val": len(va_ids), "world_size": world,
        "micro_batch_size": micro, "grad_accum": accum, "effective_batch": micro * accum * world,
        "steps": step, "steps_per_epoch": steps_per_epoch, "epochs_run": round(step / steps_per_epoch, 4),
        "eval_every_steps": eval_every, "initial_val_loss": init_loss, "best_val_loss": best,
        "best_step": best_step, "stopped_early": stopped_early, "n_truncated": n_trunc,
        "n_truncated_val": n_trunc_val, "trainable_params": int(n_trainable), "wall_s": round(time.time() - t0, 2),
        "adapter_dir": str(adapter_dir), "adapter": adapter_info, "history": history, "resumed": False,
        "distributed_type": str(acc.distributed_type), "in_memory_is_best": not sharded,
        "config": {k: v for k, v in c.items() if k != "task_overrides"},
        "init_adapter": str(init_adapter) if init_adapter is not None else None,
        "ctr_loss": c["ctr_loss"] if task == "ctr" else None,
    }
    if acc.is_main_process:
        write_json(report_path, report)
        if logger is not None:
            logger.log_metrics({"train/best_val_loss": best, "train/best_step": best_step,
                                "train/wall_s": report["wall_s"]})
    unwrapped.eval()
    return unwrapped, report


def _snapshot(acc, ddp_model, unwrapped, sharded: bool) -> dict[str, torch.Tensor]:
    """A CPU copy of the LoRA weights now (gathered from the full state dict when parameters are sharded)."""
    if not sharded:
        return _lora_state(unwrapped)
    full = acc.get_state_dict(ddp_model)  # a collective call: every process takes part
    if not acc.is_main_process:
        return {}
    return {k: v.detach().to("cpu", copy=True) for k, v in full.items() if "lora_" in k}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def load_samples(path: str | os.PathLike):
    """Samples from a .parquet, .json (records) or .jsonl file, with a clear error for other inputs."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise DataError(f"sample file not found: {p}")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix == ".jsonl":
        return pd.read_json(p, lines=True)
    if p.suffix == ".json":
        return pd.read_json(p)
    raise DataError(f"{p}: unsupported sample file type (use .parquet, .json or .jsonl)")


def select_coreset(df, indices, name: str = "coreset"):
    """The rows of a split named by a coreset's integer positions; fails on an empty or mismatched coreset."""
    idx = np.asarray(indices)
    if idx.size == 0:
        raise DataError(f"{name}: empty coreset (no indices)")
    if not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{name}: indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= len(df):
        raise DataError(f"{name}: indices range {idx.min()}..{idx.max()} does not fit the {len(df)} training "
                        "samples: the coreset was selected on another dataset")
    if len(np.unique(idx)) != idx.size:
        raise DataError(f"{name}: duplicate indices")
    return df.iloc[idx]


def main(argv: list[str] | None = None) -> int:
    """CLI: fine-tune LoRA from sample files (works under `accelerate launch`)."""
    from omegaconf import OmegaConf

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--train", help="training samples (.parquet/.json/.jsonl)")
    ap.add_argument("--val", help="validation samples")
    ap.add_argument("--adapter", default=None, help="evaluate this saved adapter instead of training")
    ap.add_argument("--task", required=True, choices=["seqrec", "ctr"])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2_135m | llama7b")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--coreset", default=None, help=".npy of integer positions into --train")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs/train/default.yaml"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--test", default=None, help="optional test samples to evaluate after training")
    ap.add_argument("--catalogue", default=None, help="item catalogue (item_id, title) for SeqRec evaluation")
    ap.add_argument("--eval-config", default=None)
    ap.add_argument("--dtype", default="float32", help="model weights dtype (bfloat16 for llama7b on GPU)")
    ap.add_argument("--load-in-8bit", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotlist overrides of the train config, e.g. lr=1e-3")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = OmegaConf.merge(load_config_file(a.config), OmegaConf.from_dotlist(a.overrides))
    c = train_config(cfg, a.task)
    set_threads(c["num_threads"])
    from accelerate import PartialState

    from goracs.models import load_model

    from peft import PeftModel

    if a.adapter is None and not (a.train and a.val):
        ap.error("--train and --val are needed unless --adapter names a trained adapter to evaluate")
    if a.adapter is not None and not a.test:
        ap.error("--adapter (evaluation only) needs --test")
    state = PartialState(cpu=str(c["device"]) == "cpu")  # joins the launcher's process group, if any
    dev = str(state.device)
    model, tok = load_model(a.model, a.model_path, dtype=a.dtype, load_in_8bit=a.load_in_8bit, device=dev,
                            seed=int(c["seed"]))
    result: dict[str, Any] = {}
    if a.adapter is not None:
        _check_adapter(Path(a.adapter), expect_trained=False)
        model = PeftModel.from_pretrained(model, a.adapter).eval()
        result["adapter"] = str(a.adapter)
    else:
        train_df = load_samples(a.train)
        if a.coreset:
            train_df = select_coreset(train_df, np.load(a.coreset), name=a.coreset)
        val_df = load_samples(a.val)
        model, report = train_lora(model, tok, train_df, val_df, a.task, cfg, a.out)
        if not report.get("in_memory_is_best", True):  # FSDP / DeepSpeed: evaluate the saved best adapter
            base, tok = load_model(a.model, a.model_path, dtype=a.dtype, load_in_8bit=a.load_in_8bit,
                                   device=dev, seed=int(c["seed"]))
            model = PeftModel.from_pretrained(base, report["adapter_dir"]).eval()
        result["train"] = {k: v for k, v in report.items() if k not in ("history", "config")}
    if a.test:
        test_df = load_samples(a.test)
        ecfg = to_dict(load_config_file(a.eval_config)) if a.eval_config else {}
        if a.task == "ctr":
            from goracs.evaluate.ctr import evaluate_ctr

            r = evaluate_ctr(model, tok, test_df, ecfg)
        else:
            from goracs.evaluate.seqrec import evaluate_seqrec

            if not a.catalogue:
                raise DataError("SeqRec evaluation needs --catalogue")
            r = evaluate_seqrec(model, None, tok, test_df, load_samples(a.catalogue), ecfg,
                                cache_dir=Path(a.out) / "cache")
        result["eval"] = {k: v for k, v in r.items() if k not in ("per_sample", "p_yes", "labels")}
    if state.is_main_process:
        write_json(Path(a.out) / "result.json", result)
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
