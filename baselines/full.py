"""Full-data training: the whole training pool, whatever the budget (the paper's "full" row)."""

from __future__ import annotations

import numpy as np

from goracs.selection.base import Selection, SelectionError, Selector, Signals


class FullSelector(Selector):
    """Selects every sample of the pool. The budget is ignored (metrics.json records the pool size as the budget
    actually used, next to the requested one), so a table's `full` row trains on the pool the other rows select
    from."""

    name = "full"

    def select(self, signals: Signals, budget: int, seed: int = 0) -> Selection:
        n = signals.n_train
        if n <= 0:
            raise SelectionError("the training pool is empty")
        return Selection(np.arange(n, dtype=np.int64), {"full": True, "budget_requested": int(budget),
                                                         "select_seconds": 0.0})

    def _select(self, signals: Signals, budget: int, seed: int) -> Selection:  # pragma: no cover (select overrides)
        return self.select(signals, budget, seed)
