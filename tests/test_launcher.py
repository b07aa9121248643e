"""The shipped joblib launcher config (hydra/launcher=cpu2) runs a multirun's jobs two at a time (issue 16)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu2_launcher_runs_two_tiny_jobs_side_by_side(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "goracs", "-m", "hydra/launcher=cpu2", "stage=all", "task=ctr", "selector=random",
           "seed=0,1", "model=tiny", "train=tiny", "train.epochs=1", "logger=none", "progress=false",
           "dataset.synthetic.n_users=150", "dataset.synthetic.n_items=120", "task.max_history=3",
           "task.pool.max_train=24", "task.pool.max_valid=12", "task.pool.max_test=8", "task.budget=6",
           "proxy_check=false", f"paths.root_dir={tmp_path}", "hydra.sweep.subdir=${hydra:job.num}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "outputs").rglob("metrics.json"))
    assert len(runs) == 2
    seeds = sorted(json.loads((r / "metrics.json").read_text())["seed"] for r in runs)
    assert seeds == [0, 1]
    # two worker processes, and the two jobs' lifetimes overlap (run_info.json written at the start of a job,
    # metrics.json at its end)
    pids = set(re.findall(r"building train/\w+ \(pid (\d+)\)", out.stdout + out.stderr))
    assert len(pids) == 2
    (a0, a1), (b0, b1) = [((r / "run_info.json").stat().st_mtime, (r / "metrics.json").stat().st_mtime)
                          for r in runs]
    assert a0 < b1 and b0 < a1
