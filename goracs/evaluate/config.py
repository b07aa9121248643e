"""The evaluation config: every key the SeqRec and CTR evaluations read, with its default (EvalConfig, mirrored
key for key by configs/eval/default.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from goracs.config import defaults_of, to_dict


@dataclass
class EvalConfig:
    """Evaluation settings and their defaults (the single declaration; configs/eval/default.yaml lists exactly
    these keys, see tests/test_eval_ctr.py)."""

    # SeqRec (BIGRec generation + grounding)
    protocol: str = "sampled"               # sampled (target + negatives) | full (the whole catalogue)
    num_beams: int = 2
    max_new_tokens: int = 32
    batch_size: int = 8                     # prompts per generation / scoring batch (both tasks)
    embed_batch_size: int = 32
    cutoff_len: int | None = 512            # prompts lose their oldest tokens beyond this (both tasks)
    title_max_tokens: int = 64
    ks: list[int] = field(default_factory=lambda: [5, 10])
    num_negatives: int = 99
    max_samples: int | None = None
    seed: int = 0
    # CTR (TALLRec P(Yes))
    yes: str = "Yes"
    no: str = "No"
    multi_token: str = "sequence"           # sequence | error | force_sequence
    # both
    num_threads: int | None = None
    progress: bool = True


def eval_config(cfg: Any = None) -> dict[str, Any]:
    """The effective evaluation config: the EvalConfig defaults, then cfg (a dict, a DictConfig or None)."""
    return {**defaults_of(EvalConfig), **to_dict(cfg)}
