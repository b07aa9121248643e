"""The Hydra entry point: `python -m goracs stage=<stage> dataset=<name> task=<name> ...`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from goracs import demo, pipeline
from goracs.report import study
from goracs.runinfo import write_run_info
from goracs.validate import check_config

log = logging.getLogger("goracs")

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
STAGES = ("prepare", "stats", "all", "demo", "aggregate")


def run(cfg: DictConfig, out_dir: Path):
    """Run the configured stage and record how it was run."""
    if cfg.stage not in STAGES:
        raise ValueError(f"unknown stage '{cfg.stage}'; known: {list(STAGES)}")
    check_config(cfg)  # every setting the stage reads, before anything is computed (ConfigError names the bad ones)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    if cfg.stage == "all":
        prev = pipeline.finished_result(cfg, out_dir)
        if prev is not None:  # a finished job keeps the run_info.json of the run that made its metrics
            log.info("%s already finished with this config: skipped", out_dir)
            return prev
    write_run_info(out_dir, OmegaConf.to_container(cfg, resolve=True), int(cfg.seed))
    if cfg.stage == "prepare":
        data = pipeline.run_prepare(cfg)
        print(f"{cfg.dataset.name}/{cfg.task.name}: train {len(data.train)}, valid {len(data.valid)}, "
              f"test {len(data.test)}, catalogue {len(data.catalogue)} -> {data.path}")
        return data
    if cfg.stage == "stats":
        return demo.run_stats(cfg, out_dir)
    if cfg.stage == "all":
        return pipeline.run_all(cfg, out_dir)
    if cfg.stage == "demo":
        return demo.run_demo(cfg, out_dir)
    if cfg.stage == "aggregate":
        return study.run_aggregate(cfg, out_dir)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig):
    """Resolve the config and run the requested stage."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    return run(cfg, out_dir)


if __name__ == "__main__":
    main()
