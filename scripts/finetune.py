#!/usr/bin/env python
"""Fine-tune LoRA on sample files (optionally a coreset of them) and evaluate; works under `accelerate launch`.

Example (two CPU processes, tiny model):
  accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/finetune.py \
      --train train.parquet --val val.parquet --task ctr --model tiny --config configs/train/tiny.yaml --out out/
See docs/multigpu.md for the GPU launch commands. `python -m goracs.train` runs this script too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from goracs.config import to_dict  # noqa: E402
from goracs.errors import DataError  # noqa: E402
from goracs.io import load_samples, write_json  # noqa: E402
from goracs.runtime import set_threads  # noqa: E402
from goracs.tasks import select_coreset  # noqa: E402
from goracs.train import check_saved_adapter, load_config_file, train_config, train_lora  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """CLI: fine-tune LoRA from sample files (works under `accelerate launch`)."""
    from omegaconf import OmegaConf

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--train", help="training samples (.parquet/.json/.jsonl)")
    ap.add_argument("--val", help="validation samples")
    ap.add_argument("--adapter", default=None, help="evaluate this saved adapter instead of training")
    ap.add_argument("--task", required=True, choices=["seqrec", "ctr"])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2_135m | llama7b")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--coreset", default=None, help=".npy of integer positions into --train")
    ap.add_argument("--config", default=str(ROOT / "configs/train/default.yaml"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--test", default=None, help="optional test samples to evaluate after training")
    ap.add_argument("--catalogue", default=None, help="item catalogue (item_id, title) for SeqRec evaluation")
    ap.add_argument("--eval-config", default=None)
    ap.add_argument("--dtype", default="float32", help="model weights dtype (bfloat16 for llama7b on GPU)")
    ap.add_argument("--load-in-8bit", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotlist overrides of the train config, e.g. lr=1e-3")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the LoRA is the model's (configs/model/<name>.yaml lora: the one LoRA node); `lora.r=...` overrides it
    model_file = ROOT / "configs/model" / f"{a.model}.yaml"
    lora = OmegaConf.load(model_file).get("lora") if model_file.exists() else None
    cfg = OmegaConf.merge({"lora": lora} if lora is not None else {}, load_config_file(a.config),
                          OmegaConf.from_dotlist(a.overrides))
    c = train_config(cfg, a.task)
    set_threads(c["num_threads"])
    from accelerate import PartialState

    from goracs.models import load_model

    from peft import PeftModel

    if a.adapter is None and not (a.train and a.val):
        ap.error("--train and --val are needed unless --adapter names a trained adapter to evaluate")
    if a.adapter is not None and not a.test:
        ap.error("--adapter (evaluation only) needs --test")
    state = PartialState(cpu=str(c["device"]) == "cpu")  # joins the launcher's process group, if any
    dev = str(state.device)
    model, tok = load_model(a.model, a.model_path, dtype=a.dtype, load_in_8bit=a.load_in_8bit, device=dev,
                            seed=int(c["seed"]))
    result: dict[str, Any] = {}
    if a.adapter is not None:
        check_saved_adapter(Path(a.adapter), expect_trained=False)
        model = PeftModel.from_pretrained(model, a.adapter).eval()
        result["adapter"] = str(a.adapter)
    else:
        train_df = load_samples(a.train)
        if a.coreset:
            train_df = select_coreset(train_df, np.load(a.coreset), name=a.coreset)
        val_df = load_samples(a.val)
        model, report = train_lora(model, tok, train_df, val_df, a.task, cfg, a.out)
        if not report.get("in_memory_is_best", True):  # FSDP / DeepSpeed: evaluate the saved best adapter
            base, tok = load_model(a.model, a.model_path, dtype=a.dtype, load_in_8bit=a.load_in_8bit,
                                   device=dev, seed=int(c["seed"]))
            model = PeftModel.from_pretrained(base, report["adapter_dir"]).eval()
        result["train"] = {k: v for k, v in report.items() if k not in ("history", "config")}
    if a.test:
        test_df = load_samples(a.test)
        ecfg = to_dict(load_config_file(a.eval_config)) if a.eval_config else {}
        if a.task == "ctr":
            from goracs.evaluate.ctr import evaluate_ctr

            r = evaluate_ctr(model, tok, test_df, ecfg)
        else:
            from goracs.evaluate.seqrec import evaluate_seqrec

            if not a.catalogue:
                raise DataError("SeqRec evaluation needs --catalogue")
            r = evaluate_seqrec(model, None, tok, test_df, load_samples(a.catalogue), ecfg,
                                cache_dir=Path(a.out) / "cache")
        result["eval"] = {k: v for k, v in r.items() if k not in ("per_sample", "p_yes", "labels")}
    if state.is_main_process:
        write_json(Path(a.out) / "result.json", result)
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
