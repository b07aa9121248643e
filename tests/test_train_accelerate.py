"""Two-process DDP fine-tuning on the CPU through `accelerate launch` (configs/accelerate/cpu_2proc.yaml):
both processes join, and the result equals one process with the same effective batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from goracs.models import tiny_llama
from goracs.train import train_lora
from test_train import ctr_df

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_accelerate_launch_matches_one_process(tmp_path):
    ctr_df(8).to_parquet(tmp_path / "train.parquet")
    ctr_df(4, seed=1).to_parquet(tmp_path / "val.parquet")
    ctr_df(5, seed=2).to_parquet(tmp_path / "test.parquet")  # odd size: uneven shards across the 2 processes
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
           "--main_process_port", str(_free_port()), str(ROOT / "scripts/finetune.py"),
           "--train", str(tmp_path / "train.parquet"), "--val", str(tmp_path / "val.parquet"), "--task", "ctr",
           "--model", "tiny", "--config", str(ROOT / "configs/train/tiny.yaml"), "--out", str(tmp_path / "ddp"),
           "--test", str(tmp_path / "test.parquet"), "epochs=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    full = json.loads((tmp_path / "ddp" / "result.json").read_text())
    res = full["train"]
    assert res["world_size"] == 2 and res["grad_accum"] == 1 and res["effective_batch"] == 4
    assert res["adapter"]["tensors"] == 8 and res["adapter"]["lora_B_norm"] > 0

    # one process, micro-batch 2 with 2 accumulation steps: the same samples per optimizer step
    torch.set_num_threads(1)
    model, tok = tiny_llama(seed=0)
    from tests.test_train import tiny_train_config

    cfg = tiny_train_config()
    cfg.epochs = 2
    single, rep = train_lora(model, tok, ctr_df(8), ctr_df(4, seed=1), "ctr", cfg, tmp_path / "single")
    assert rep["world_size"] == 1 and rep["grad_accum"] == 2 and rep["steps"] == res["steps"] == 4
    assert res["best_val_loss"] == pytest.approx(rep["best_val_loss"], abs=1e-5)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ddp/adapter/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "single/adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # evaluation sharded over the 2 processes and gathered equals the in-process evaluation
    from goracs.evaluate.ctr import evaluate_ctr

    ev = evaluate_ctr(single, tok, ctr_df(5, seed=2), {"progress": False})
    assert full["eval"]["n"] == 5
    assert full["eval"]["logloss"] == pytest.approx(ev["logloss"], abs=1e-5)
    assert full["eval"]["auc"] == pytest.approx(ev["auc"])
