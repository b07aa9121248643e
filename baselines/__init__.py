"""Baseline coreset selectors (method.md 7); importing the package registers them with goracs.selection."""

from baselines import el2n, grand, kcenter, random  # noqa: F401  (each module registers its selector)
from baselines import ccs  # noqa: F401
from baselines import d2pruning  # noqa: F401
from baselines import moderate  # noqa: F401
from baselines import dealrec  # noqa: F401
