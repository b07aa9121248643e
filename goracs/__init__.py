"""goracs: optimal-transport coreset selection for fine-tuning LLM-based recommenders (GORACS, KDD 2025)."""

__version__ = "0.1.0"
