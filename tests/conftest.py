"""Shared fixtures: the real data folder beside the project (skipped cleanly when absent), offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GORACS_SHARED_DATA", ROOT.parent / "shared" / "data"))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Amazon fixtures in ../shared/data; the test is skipped when the folder is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} is absent")
    return SHARED


def shared_file(rel: str) -> Path:
    """One real fixture file; skip when missing."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"real data file {p} is absent")
    return p
