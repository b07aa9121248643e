"""`python -m goracs.train ...`: the fine-tuning command line of scripts/finetune.py (in a source checkout)."""

import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "finetune.py"
if not SCRIPT.exists():
    sys.exit(f"{SCRIPT} not found: `python -m goracs.train` runs the repository's scripts/finetune.py")
sys.argv[0] = str(SCRIPT)
runpy.run_path(str(SCRIPT), run_name="__main__")
