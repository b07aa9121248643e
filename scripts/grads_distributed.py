"""Data-parallel gradient norms: each `accelerate launch` process fills disjoint shards; rank 0 assembles.

  accelerate launch --multi_gpu --num_processes 2 scripts/grads_distributed.py [--cpu] --data train.parquet \
      --task seqrec --model smollm2_135m --shard-dir cache/grads --out cache/grads/train_seqrec.npy

On a CPU-only machine use the same command with the script's --cpu: accelerate 1.15 starts a single process for
`accelerate launch --cpu` (its simple launcher, unless an MPI hostfile is given), whereas --multi_gpu goes through
torchrun; every process then joins a gloo group on the CPU. An interrupted run resumes from the finished shards.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goracs.signals.grads import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
