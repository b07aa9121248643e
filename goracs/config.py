"""Config access shared by every stage: plain dicts from configs, and defaults declared once as dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def to_dict(cfg: Any) -> dict:
    """A plain dict from a dict, a DictConfig or None (interpolations resolved)."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return {k: (to_dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    raise TypeError(f"config must be a mapping, got {type(cfg).__name__}")


def defaults_of(cls) -> dict[str, Any]:
    """The defaults of a config dataclass as a fresh plain dict (nested dataclasses become dicts)."""
    return dataclasses.asdict(cls())
