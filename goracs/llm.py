"""The configured LLM for the stages: loading it once per process, what identifies it in cache keys, and the
initial adapter (model.init_adapter) that the gradient, EL2N and fine-tuning stages start from."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from goracs.config import to_dict as as_dict
from goracs.runtime import resolve_device

log = logging.getLogger(__name__)

_MODELS: dict[str, Any] = {}


def base_model(cfg: DictConfig, fresh: bool = False):
    """(model, tokenizer) of the configured LLM; `fresh` returns an unwrapped copy for training."""
    from goracs.models import load_model

    m = cfg.model
    key = f"{m.name}:{m.get('path')}:{m.get('dtype')}"
    if fresh or key not in _MODELS:
        model, tok = load_model(m.name, path=m.get("path"), dtype=m.get("dtype", "float32"),
                                load_in_8bit=bool(m.get("load_in_8bit", False)), device=device_of(cfg),
                                seed=int(cfg.seed))
        if fresh:
            return model, tok
        _MODELS.clear()  # one resident model at a time
        _MODELS[key] = (model, tok)
    return _MODELS[key]


def device_of(cfg: DictConfig) -> str:
    return str(resolve_device(cfg.get("device", "cpu")))


def model_key(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the LLM for caching (with the content of the initial adapter, when one is set)."""
    from goracs.io import file_fingerprint
    from goracs.models import adapter_fingerprint

    m = as_dict(cfg.model)
    if m.get("path"):
        cfg_file = Path(m["path"]) / "config.json"
        if cfg_file.exists():
            m["fingerprint"] = file_fingerprint(cfg_file)
    if m.get("init_adapter"):
        m["init_adapter_fingerprint"] = adapter_fingerprint(m["init_adapter"])
    return m


def init_adapter(cfg: DictConfig) -> str | None:
    """The starting LoRA adapter folder (model.init_adapter) shared by the gradient, EL2N and fine-tuning stages;
    warns when its LoRA settings differ from model.lora (the adapter's own settings are the ones used)."""
    path = cfg.model.get("init_adapter")
    if not path:
        return None
    from goracs.models import ModelError

    cfg_file = Path(path) / "adapter_config.json"
    if not cfg_file.exists():
        raise ModelError(f"initial adapter folder {path} (model.init_adapter) has no adapter_config.json"
                         if Path(path).is_dir() else f"initial adapter folder does not exist: {path} "
                         "(model.init_adapter)")
    a = json.loads(cfg_file.read_text())
    lora = as_dict(cfg.model.get("lora") or {})
    theirs = {"r": a.get("r"), "alpha": a.get("lora_alpha"), "target_modules": sorted(a.get("target_modules") or [])}
    ours = {"r": lora.get("r"), "alpha": lora.get("alpha"), "target_modules": sorted(lora.get("target_modules") or [])}
    if theirs != ours:
        log.warning("model.init_adapter %s has LoRA settings %s, model.lora says %s: the adapter's are used",
                    path, theirs, ours)
    return str(path)


def adapted_model(cfg: DictConfig):
    """A fresh (model, tokenizer) for the gradient norms and EL2N: the base LLM with the initial adapter loaded
    (frozen) when model.init_adapter is set, else the plain base model (a fresh LoRA is added by the stage)."""
    model, tok = base_model(cfg, fresh=True)
    path = init_adapter(cfg)
    if path is not None:
        from goracs.models import load_adapter

        model = load_adapter(model, path, trainable=False)
    return model, tok
