"""Coreset selection: the Selector interface, selectors built from their configs, and the GORACS engine (cost,
exact OT, ITRA: greedy, MI estimate, refinement; label-enhanced ITRA; the authors' reference mode)."""

from goracs.selection.base import Selection, SelectionError, Selector, Signals
from goracs.selection.build import build_selector, make_selector

__all__ = ["Selection", "SelectionError", "Selector", "Signals", "build_selector", "make_selector"]
