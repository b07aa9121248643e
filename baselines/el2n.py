"""EL2N (Paul et al. 2021): keep the n samples with the largest prediction-error norm."""

from __future__ import annotations

from baselines.grand import TopScoreSelector


class EL2NSelector(TopScoreSelector):
    """Top-n EL2N score (goracs.signals.el2n, after the configured warm-up)."""

    name = "el2n"
    score = "el2n"
