"""Stage keys derived, never assembled by hand: a stage's key is the hash of its upstream stages' keys, its own
resolved settings and a per-stage code version.

Because a key names its upstream keys, a setting that changes an upstream artifact (an embedding setting, the
LoRA of the gradient model, the EL2N warm-up, the prompt template inside the prepared samples) changes every
downstream key too: nothing upstream can be left out of the coreset's, the adapter's or the metrics' key. Which
settings of the `signals` group belong to which signal is declared here once (SIGNAL_SETTINGS), and every key of
the group must be claimed by a signal or declared to change only speed (EXECUTION_ONLY): a test fails when a new
key is neither, so a new setting cannot be forgotten either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from goracs.io import config_hash

# Bump a stage's version when its code changes what it produces: its key and every downstream key change.
STAGE_VERSIONS: dict[str, int] = {"pool": 1, "embeddings": 1, "grad_norms": 1, "el2n": 1, "select": 1, "train": 2,
                                  "evaluate": 3, "proxy": 1}

# The `signals` settings each signal's content depends on.
SIGNAL_SETTINGS: dict[str, tuple[str, ...]] = {
    "embeddings": ("encoder", "normalize_embeddings"),
    "grad_norms": ("grad_layer", "max_len", "lora_seed"),
    "el2n": ("max_len", "el2n_warmup_epochs", "el2n_warmup_samples", "el2n_warmup_seed"),
}
# `signals` settings that change how fast a signal is computed, never its values.
EXECUTION_ONLY: frozenset[str] = frozenset({"embed_batch_size", "grad_batch_size", "grad_shard_size",
                                            "el2n_batch_size", "device"})
# Selector settings that change how a coreset is computed, never which one (the blocked cost storage is checked
# exactly against the dense decisions): left out of the coreset's key, so a run that needed them reuses the
# coresets of runs that did not. (The selector's `device` predates this list and stays in the key.)
SELECTOR_EXECUTION_ONLY: frozenset[str] = frozenset({"cost_storage", "dense_max_gib", "chunk_rows"})
# Which signal a selector's `needs` entry comes from.
NEED_TO_SIGNAL = {"embeddings": "embeddings", "val_embeddings": "embeddings", "grad_norms": "grad_norms",
                  "el2n": "el2n"}


@dataclass(frozen=True)
class StageKey:
    """The key of one stage's artifact: what it is made from (upstream digests) and of (settings)."""

    stage: str
    upstream: tuple[tuple[str, str], ...]
    settings: Mapping[str, Any] = field(compare=False)
    version: int = 0

    @property
    def spec(self) -> dict[str, Any]:
        """The JSON-able value the cache hashes (and records as key.json)."""
        return {"stage": self.stage, "version": self.version, "upstream": dict(self.upstream),
                "settings": self.settings}

    @property
    def digest(self) -> str:
        return config_hash(self.spec)


def derive(stage: str, upstream: Sequence[StageKey], settings: Mapping[str, Any]) -> StageKey:
    """The key of `stage` from its upstream keys and its own resolved settings."""
    if stage not in STAGE_VERSIONS:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_VERSIONS)}")
    ups = tuple(sorted((u.stage, u.digest) for u in upstream))
    if len({s for s, _ in ups}) != len(ups):
        raise ValueError(f"{stage}: two upstream keys of the same stage {[s for s, _ in ups]}")
    return StageKey(stage, ups, dict(settings), STAGE_VERSIONS[stage])


def signal_settings(kind: str, signals: Mapping[str, Any]) -> dict[str, Any]:
    """The `signals` settings that determine one signal."""
    return {k: signals.get(k) for k in SIGNAL_SETTINGS[kind]}


def unclaimed_signal_settings(signals: Mapping[str, Any]) -> list[str]:
    """Keys of the `signals` group that no signal claims and that are not declared execution-only."""
    claimed = set().union(*SIGNAL_SETTINGS.values()) | EXECUTION_ONLY
    return sorted(set(signals) - claimed)
