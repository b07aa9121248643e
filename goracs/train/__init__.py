"""LoRA fine-tuning: the config (config.py), the training encoding and objective (encoding.py) and the loop
(loop.py). The command line is scripts/finetune.py (also `python -m goracs.train` in a source checkout)."""

from goracs.io import load_samples
from goracs.tasks import select_coreset
from goracs.train.config import (CTR_LOSSES, LoraConfig, TrainConfig, TrainError, eval_cadence, load_config_file,
                                 train_config)
from goracs.train.encoding import ctr_yes_no, encode_samples, sequence_loss
from goracs.train.loop import check_saved_adapter, train_lora

__all__ = ["CTR_LOSSES", "LoraConfig", "TrainConfig", "TrainError", "check_saved_adapter", "ctr_yes_no",
           "encode_samples", "eval_cadence", "load_config_file", "load_samples", "select_coreset", "sequence_loss",
           "train_config", "train_lora"]
