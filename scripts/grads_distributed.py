#!/usr/bin/env python
"""Data-parallel gradient norms: each `accelerate launch` process fills disjoint shards; rank 0 assembles.

  accelerate launch --multi_gpu --num_processes 2 scripts/grads_distributed.py [--cpu] --data train.parquet \
      --task seqrec --model smollm2_135m --shard-dir cache/grads --out cache/grads/train_seqrec.npy

On a CPU-only machine use the same command with the script's --cpu: accelerate 1.15 starts a single process for
`accelerate launch --cpu` (its simple launcher, unless an MPI hostfile is given), whereas --multi_gpu goes through
torchrun; every process then joins a gloo group on the CPU. An interrupted run resumes from the finished shards.
`python -m goracs.signals.grads` runs this script too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from goracs.io import atomic_path, load_samples  # noqa: E402
from goracs.signals.common import SignalError  # noqa: E402
from goracs.signals.grads import ensure_lora, grad_norms  # noqa: E402

log = logging.getLogger("goracs.signals.grads")


def main(argv: list[str] | None = None) -> int:
    """CLI: compute gradient norms for a split file, sharded across `accelerate launch` processes."""
    from accelerate import PartialState

    from goracs.models import load_model

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--data", required=True, help="split as .parquet or .jsonl (instruction, input, output, label)")
    ap.add_argument("--task", required=True, choices=["seqrec", "ctr"])
    ap.add_argument("--model", default="smollm2_135m", help="smollm2_135m, llama7b or tiny")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--load-in-8bit", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="tiny model init and LoRA A init")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--shard-dir", required=True)
    ap.add_argument("--out", required=True, help="where the assembled (N,) float32 .npy goes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU (gloo) even when CUDA is available")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    use_cpu = args.cpu or not torch.cuda.is_available() or \
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=use_cpu)
    device = str(state.device)
    df = load_samples(args.data)
    model, tok = load_model(args.model, args.model_path, dtype=args.dtype, load_in_8bit=args.load_in_8bit,
                            device=device, seed=args.seed)
    model = ensure_lora(model, lora_seed=args.seed)
    log.info("rank %d of %d on %s", state.process_index, state.num_processes, device)
    kw = dict(layer=args.layer, batch_size=args.batch_size, max_len=args.max_len, shard_dir=args.shard_dir,
              shard_size=args.shard_size, lora_seed=args.seed)
    grad_norms(model, tok, df, args.task, rank=state.process_index, world_size=state.num_processes,
               progress=state.is_local_main_process, **kw)
    state.wait_for_everyone()
    if state.is_main_process:
        norms = grad_norms(model, tok, df, args.task, progress=False, **kw)
        if norms is None:
            raise SignalError(f"some gradient shards in {args.shard_dir} are missing after all processes finished")
        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, norms)
        log.info("wrote %d gradient norms to %s", len(norms), args.out)
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
