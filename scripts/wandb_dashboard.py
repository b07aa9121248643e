#!/usr/bin/env python
"""Build the W&B dashboard that compares the selectors: per dataset-task one section with a panel per metric (runs
grouped by selector, mean and spread over seeds, one budget), the POO descent and the proxy check. The logic is in
goracs/report/dashboard.py.

    python scripts/wandb_dashboard.py                       # offline: writes results/wandb_dashboard.json only
    python scripts/wandb_dashboard.py --profile real_cpu --dataset games_recbole --task ctr --out /tmp/d.json
    python scripts/wandb_dashboard.py --save --entity me    # saves the report to me/goracs (W&B login needed)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goracs.report.dashboard import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
