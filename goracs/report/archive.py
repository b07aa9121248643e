"""Keep a study's finished runs in the repository, not only in the ignored outputs/ folder.

A run folder under outputs/ holds its checkpoints and adapters (large, rebuilt from the cache) and three small files
that every table is computed from: metrics.json, predictions.json (one entry per test sample) and run_info.json
(commit, command, config). `archive_runs` mirrors those three files of every finished run into a committed folder with
the same layout, so a fresh clone (a new session, a reader) can regenerate the study's tables and check them, and an
outputs/ folder lost with its machine loses nothing a table needs. metrics.json marks a finished run: it is copied
last, so an archived folder that has one has the other files too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from goracs.io import atomic_path

RUN_FILES = ("predictions.json", "run_info.json", "metrics.json")  # metrics.json last: it marks a complete copy


@dataclass
class ArchiveReport:
    """What one archive pass did, by run folder (relative to the archive)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0

    def summary(self) -> str:
        return (f"{len(self.added)} runs added, {len(self.updated)} updated, {self.unchanged} unchanged")


def is_run_summary(path: Path) -> bool:
    """True for a run's metrics.json (it names the run's dataset, task and selector); False for a stage artifact of
    the same name. A file that is not valid JSON is an error naming it: a finished run is never written half."""
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return isinstance(rec, dict) and {"dataset", "task", "selector"} <= set(rec)


def archive_runs(outputs: str | os.PathLike, archive: str | os.PathLike,
                 folders: Iterable[str]) -> ArchiveReport:
    """Mirror the small files of every finished run under `outputs`/<folder> (for each of `folders`) into `archive`,
    keeping the relative layout. A file already archived with the same bytes is left alone; one whose run was re-run
    (new bytes) is replaced, atomically. Runs in the archive but no longer under outputs/ are kept: that is the
    point."""
    outputs, archive = Path(outputs), Path(archive)
    rep = ArchiveReport()
    for folder in folders:
        root = outputs / folder
        if not root.is_dir():
            continue
        for metrics in sorted(root.rglob("metrics.json")):
            if not is_run_summary(metrics):
                continue
            rel = metrics.parent.relative_to(outputs)
            existed = (archive / rel / "metrics.json").exists()
            changed = False
            for name in RUN_FILES:
                src = metrics.parent / name
                if not src.exists():
                    continue
                data = src.read_bytes()
                dest = archive / rel / name
                if dest.exists() and dest.read_bytes() == data:
                    continue
                with atomic_path(dest) as tmp:
                    tmp.write_bytes(data)
                changed = True
            if not changed:
                rep.unchanged += 1
            else:
                (rep.updated if existed else rep.added).append(str(rel))
    return rep
