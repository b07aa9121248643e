"""LoRA fine-tuning on a coreset: SeqRec (BIGRec-style, loss on prompt and response) and CTR (TALLRec-style,
the two-way Yes/No loss or the answer's token loss), with an explicit evaluation cadence, early stopping on
validation loss, the best adapter kept and saved with `save_pretrained`, and accelerate for multi-process (DDP,
FSDP, DeepSpeed) runs."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from goracs.io import config_hash, write_json
from goracs.runtime import set_threads
from goracs.tasks import check_samples
from goracs.train.config import TrainError, eval_cadence, train_config
from goracs.train.encoding import collate, ctr_yes_no, encode_samples, per_sample, token_losses

log = logging.getLogger(__name__)
# Bump when the checkpoint's fields change: an older file is then ignored (training starts over) instead of failing.
CHECKPOINT_FORMAT = 1



def _data_key(df) -> str:
    return config_hash([df["instruction"].tolist(), df["input"].tolist(), df["output"].tolist()])


def check_saved_adapter(adapter_dir: Path, expect_trained: bool) -> dict[str, Any]:
    """Fail when the saved adapter is missing or holds no LoRA tensors; return its tensor counts."""
    from goracs.models import ADAPTER_FILES, ModelError, adapter_state

    adapter_dir = Path(adapter_dir)
    f = next((adapter_dir / n for n in ADAPTER_FILES if (adapter_dir / n).exists()), None)
    if not (adapter_dir / "adapter_config.json").exists() or f is None:
        raise TrainError(f"no adapter saved in {adapter_dir} (adapter_config.json / adapter_model.* missing)")
    try:
        sd = adapter_state(adapter_dir, "saved adapter")
    except ModelError as e:
        raise TrainError(str(e)) from e
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
               logger=None, init_adapter: str | os.PathLike | None = None, progress: bool = True,
               checkpoint_dir: str | os.PathLike | None = None, checkpoint_seconds: float | None = None):
    """Fine-tune LoRA on train_df with early stopping on val_df; return (peft_model, report).

    The best adapter (lowest validation loss) is saved under out_dir/adapter and checked non-empty; a
    finished run with the same config and data is loaded instead of retrained (cfg.resume). `model` is
    wrapped in place by peft when it is not already a PeftModel: with `init_adapter` (a PEFT LoRA folder, e.g.
    the authors' instruction-tuned alpaca-tallrec / alpaca-bigrec) training starts from that adapter's weights
    and its LoRA settings, else from a fresh LoRA (B = 0) with cfg.lora.

    With `checkpoint_dir` (one process), the run's whole state is written there at an optimizer step every
    `checkpoint_seconds` (default GORACS_TRAIN_CHECKPOINT_SECONDS or 120): a run of the same key that finds it
    continues from that step and ends with exactly the adapter an uninterrupted run would have (the LoRA weights,
    optimizer, schedule, early-stopping state, dropout RNG and the epoch's shuffle are restored). A checkpoint of
    another key is ignored; the caller removes the folder once the adapter is in place.
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
            check_saved_adapter(adapter_dir, expect_trained=False)
            log.info("adapter already trained in %s: loading it", adapter_dir)
            if isinstance(model, PeftModel):
                raise TrainError("resume needs the base model, not a PeftModel")
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
            return peft_model, {**old, "resumed": True}
        log.warning("%s holds a run with another config or data: retraining", out_dir)

    t0, c0 = time.time(), time.process_time()
    world_guess = int(os.environ.get("WORLD_SIZE", "1"))
    micro = int(c["micro_batch_size"])
    accum = max(1, int(c["batch_size"]) // (micro * world_guess))
    from accelerate.utils import DistributedType

    if world_guess == 1:
        # accelerate keeps one process-wide state: a second run in the same process (a Hydra multirun with the basic
        # launcher, a notebook, a test session) with another mixed precision or device would be refused. One process
        # alone has nothing to keep in sync, so each run starts from a fresh state.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
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
    collate_fn = collate(tokenizer.pad_token_id)
    g = torch.Generator().manual_seed(int(c["seed"]))
    train_dl = torch.utils.data.DataLoader(list(zip(range(len(tr_ids)), tr_ids, tr_lab)), batch_size=micro,
                                           shuffle=True, generator=g, collate_fn=collate_fn)
    val_dl = torch.utils.data.DataLoader(list(zip(range(len(va_ids)), va_ids, va_lab)),
                                         batch_size=int(c["eval_batch_size"]), shuffle=False, collate_fn=collate_fn)
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

    from goracs.signals import packed as P

    # the two-way CTR validation loss of a LLaMA decoder in one process: the packed forward (shared prompt prefix
    # once, no padding, the Yes/No rows of the head at the answer position only), the same loss as the padded batch
    packed_val = yes_no is not None and world == 1 and P.packable(unwrapped)
    if packed_val:
        va_prompts = [s[:-1] for s in va_ids]
        va_cls = torch.as_tensor([int(s[-1] == int(yes_no[1])) for s in va_ids])

    def val_loss() -> float:
        ddp_model.eval()
        if packed_val:
            two = P.answer_logits(unwrapped, va_prompts, yes_no, int(c["eval_batch_size"]))
            ddp_model.train()
            return float(torch.nn.functional.cross_entropy(two, va_cls))
        losses = []
        with torch.no_grad():
            for batch in val_dl:
                ce, m = token_losses(ddp_model, batch, yes_no)
                losses.append(acc.gather_for_metrics(per_sample(ce, m)))
        ddp_model.train()
        return float(torch.cat(losses).mean())

    ck_file = (Path(checkpoint_dir) / "train_state.pt" if checkpoint_dir is not None and world == 1 and not sharded
               else None)  # one process: sharded or distributed states are not gathered here
    ck_every = float(checkpoint_seconds if checkpoint_seconds is not None
                     else os.environ.get("GORACS_TRAIN_CHECKPOINT_SECONDS", 120))
    ck = _load_state(ck_file, key)
    if ck is not None:
        set_peft_model_state_dict(unwrapped, ck["lora"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        history, init_loss = ck["history"], ck["init_loss"]
        best, best_step, best_state, bad_evals = ck["best"], ck["best_step"], ck["best_state"], ck["bad_evals"]
        step, stopped_early, running, running_n = ck["step"], False, ck["running"], ck["running_n"]
        if acc.scaler is not None and ck["scaler"] is not None:
            acc.scaler.load_state_dict(ck["scaler"])
        t0, c0 = t0 - ck["wall_s"], c0 - ck["cpu_s"]
        log.info("continuing the training from step %d of %d (%s)", step, total_steps, ck_file)
    else:
        history: list[dict[str, Any]] = []
        init_loss = val_loss()
        history.append({"step": 0, "epoch": 0.0, "val_loss": init_loss})
        if logger is not None and acc.is_main_process:
            logger.log_metrics({"val/loss": init_loss}, step=0)
        best, best_step, best_state, bad_evals = math.inf, 0, None, 0
        step, stopped_early, running, running_n = 0, False, 0.0, 0
    ck_time = time.time()
    ddp_model.train()
    bar = tqdm(total=total_steps, initial=step, desc=f"train {task}",
               disable=not (progress and acc.is_local_main_process))
    done = False
    first_epoch, skip = (ck["epoch"], ck["micro_done"]) if ck is not None else (0, 0)
    if ck is not None:
        torch.set_rng_state(ck["rng"])  # LoRA dropout draws from it; validation (eval mode) draws nothing
        if ck["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
    for epoch in range(first_epoch, int(c["epochs"])):
        if ck is not None and epoch == first_epoch:
            g.set_state(ck["g_epoch"])  # the epoch's shuffle is drawn from g when its iterator starts
        g_epoch = g.get_state()
        for i, batch in enumerate(train_dl):
            if epoch == first_epoch and i < skip:
                continue
            last_micro = (i + 1) % accum == 0 or i + 1 == micro_per_epoch
            n_micro = accum if (i // accum + 1) * accum <= micro_per_epoch else micro_per_epoch % accum
            sync = last_micro or world == 1 or is_ds
            ctx = contextlib.nullcontext() if sync else acc.no_sync(ddp_model)
            with ctx:
                ce, m = token_losses(ddp_model, batch, yes_no)
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
            if ck_file is not None and i + 1 < micro_per_epoch and time.time() - ck_time >= ck_every:
                _save_state(ck_file, {
                    "format": CHECKPOINT_FORMAT, "key": key, "epoch": epoch,
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                    "micro_done": i + 1, "g_epoch": g_epoch, "rng": torch.get_rng_state(),
                    "lora": _lora_state(unwrapped), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "history": history, "init_loss": init_loss, "best": best, "best_step": best_step,
                    "best_state": best_state, "bad_evals": bad_evals, "step": step, "running": running,
                    "running_n": running_n, "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0})
                ck_time = time.time()
                _checkpointed(step)
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
            adapter_info = check_saved_adapter(tmp, expect_trained=True)
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
        "cpu_s": round(time.process_time() - c0, 2),
        "adapter_dir": str(adapter_dir), "adapter": adapter_info, "history": history, "resumed": False,
        "continued_from_step": ck["step"] if ck is not None else None,
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


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (a kill while writing leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path | None, key: str) -> dict[str, Any] | None:
    """The checkpoint of this run (same key), or None (none, another run's, or unreadable: then training starts
    over, which is always correct)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated file from an older writer: start over
        log.warning("ignoring the unreadable training checkpoint %s (%s)", path, e)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        log.warning("ignoring the training checkpoint %s: not of this code's format %d", path, CHECKPOINT_FORMAT)
        return None
    if state.get("key") != key:
        log.warning("ignoring the training checkpoint %s: it belongs to another config or data", path)
        return None
    return state


def _checkpointed(step: int) -> None:
    """Called after each checkpoint is written (a seam for tests that interrupt a run there)."""


def _snapshot(acc, ddp_model, unwrapped, sharded: bool) -> dict[str, torch.Tensor]:
    """A CPU copy of the LoRA weights now (gathered from the full state dict when parameters are sharded)."""
    if not sharded:
        return _lora_state(unwrapped)
    full = acc.get_state_dict(ddp_model)  # a collective call: every process takes part
    if not acc.is_main_process:
        return {}
    return {k: v.detach().to("cpu", copy=True) for k, v in full.items() if "lora_" in k}
