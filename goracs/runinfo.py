"""Provenance recorded next to every run's outputs: resolved config, git commit, package versions, seed."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from goracs.io import write_json

PACKAGES = ("goracs", "torch", "transformers", "peft", "accelerate", "pot", "numpy", "scipy", "pandas",
            "scikit-learn", "sentence-transformers", "hydra-core", "wandb", "numba", "datasets")


def git_commit(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """HEAD commit and whether the work tree has uncommitted changes (None outside a git checkout)."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that determine results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_info(resolved_cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Everything needed to say how a result was produced."""
    return {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "seed": seed,
            "git": git_commit(), "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": package_versions(), "argv": sys.argv, "config": resolved_cfg}


def write_run_info(out_dir: str | os.PathLike, resolved_cfg: dict[str, Any], seed: int) -> Path:
    """Write run_info.json into the run's output folder."""
    path = Path(out_dir) / "run_info.json"
    write_json(path, run_info(resolved_cfg, seed))
    return path
