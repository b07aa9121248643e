#!/usr/bin/env python
"""Fine-tune LoRA on sample files (optionally a coreset of them) and evaluate; works under `accelerate launch`.

Example (two CPU processes, tiny model):
  accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/finetune.py \
      --train train.parquet --val val.parquet --task ctr --model tiny --config configs/train/tiny.yaml --out out/
See docs/multigpu.md for the GPU launch commands.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from goracs.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
