"""Coreset selection: the Selector interface, the GORACS engine (cost, POO, ITRA, label-enhanced ITRA)."""

from goracs.selection.base import REGISTRY, Selection, SelectionError, Selector, Signals, make_selector, register

__all__ = ["REGISTRY", "Selection", "SelectionError", "Selector", "Signals", "make_selector", "register"]
