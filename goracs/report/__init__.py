"""Reporting: experiment logging (Weights & Biases or none)."""

from goracs.report.wandb import RunLogger, WandbLogger, make_logger, read_offline_run

__all__ = ["RunLogger", "WandbLogger", "make_logger", "read_offline_run"]
