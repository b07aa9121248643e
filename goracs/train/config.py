"""The fine-tuning config: every key train_lora reads with its default (TrainConfig, mirrored key for key by
configs/train/default.yaml), the effective config of a task, the validation cadence, and YAML loading."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goracs.config import defaults_of, to_dict

log = logging.getLogger(__name__)

CTR_LOSSES = ("two_way", "token")


class TrainError(RuntimeError):
    """Fine-tuning that cannot proceed or produced an unusable adapter."""


@dataclass
class LoraConfig:
    """train.lora: a fresh LoRA's settings (an init_adapter brings its own)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TrainConfig:
    """Every key train_lora reads, with its default (the single declaration; the YAML files set them explicitly
    and configs/train/default.yaml lists exactly these keys, see tests/test_train.py)."""

    lr: float = 3e-4
    epochs: int = 2
    batch_size: int = 8                     # effective batch (micro batches x accumulation x processes)
    micro_batch_size: int = 4
    cutoff_len: int | None = 256
    truncation: str = "left"                # left | right
    eval_every_steps: int | None = None     # None: once per epoch
    patience: int | None = 3
    min_delta: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "constant"             # constant | linear
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    eval_batch_size: int = 8
    val_max_samples: int | None = None      # None: the whole validation split
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0
    device: str = "cpu"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    resume: bool = True
    num_threads: int | None = None
    add_eos: bool = True
    max_steps: int | None = None
    task_overrides: dict[str, Any] = field(default_factory=dict)
    ctr_loss: str = "two_way"               # two_way | token
    eval_every_steps_above_n: dict[str, int] | None = None  # {n, steps}


def train_config(cfg: Any, task: str) -> dict[str, Any]:
    """The effective training config: defaults (TrainConfig), then cfg, then cfg.task_overrides[task]."""
    c = defaults_of(TrainConfig)
    user = to_dict(cfg)
    unknown = sorted(set(user) - set(c))
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
