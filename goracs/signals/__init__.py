"""Per-sample selection signals: text embeddings, LoRA gradient norms, EL2N (method.md 4)."""

from goracs.signals.common import SignalError

__all__ = ["SignalError"]
