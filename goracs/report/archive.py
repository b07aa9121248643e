"""Keep a study's finished runs in the repository, not only in the ignored outputs/ folder.

A run folder under outputs/ holds its checkpoints and adapters (large, rebuilt from the cache) and three small files
that every table is computed from: metrics.json, predictions.json (one entry per test sample) and run_info.json
(commit, command, config). `archive_runs` mirrors those three files of every finished run into a committed folder with
the same layout, so a fresh clone (a new session, a reader) can regenerate the study's tables and check them, and an
outputs/ folder lost with its machine loses nothing a table needs. metrics.json marks a finished run: it is copied
last, so an archived folder that has one has the other files too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from goracs.io import atomic_path
from goracs.report.aggregate import run_summary

RUN_FILES = ("predictions.json", "run_info.json", "metrics.json")  # metrics.json last: it marks a complete copy
CORESET_FILE = "coreset_indices.npy"  # the run's coreset (metrics.json names it in cache/, which a clone lacks)


@dataclass
class ArchiveReport:
    """What one archive pass did, by run folder (relative to the archive)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # "folder: why", runs not archived this time

    def summary(self) -> str:
        text = f"{len(self.added)} runs added, {len(self.updated)} updated, {self.unchanged} unchanged"
        return text + "".join(f"\n  not archived: {s}" for s in self.skipped)


def _why_not(folder: Path) -> str | None:
    """Why a finished-looking run folder must not be archived now, or None. A job re-run into its folder writes
    run_info.json when it starts and predictions.json, then metrics.json, when it ends: until then the folder mixes
    the old run's results with the new run's record, so it waits for the next pass."""
    missing = [n for n in RUN_FILES if not (folder / n).exists()]
    if missing:
        return f"no {', '.join(missing)}"
    t = {n: (folder / n).stat().st_mtime for n in RUN_FILES}
    if t["run_info.json"] > t["metrics.json"] or t["predictions.json"] > t["metrics.json"]:
        return "a re-run is in progress (run_info.json or predictions.json newer than metrics.json)"
    return None


def _copy(data: bytes, dest: Path) -> bool:
    """Write `data` to `dest` atomically unless it already holds exactly that; True when written."""
    if dest.exists() and dest.read_bytes() == data:
        return False
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return True


def archive_runs(outputs: str | os.PathLike, archive: str | os.PathLike,
                 folders: Iterable[str]) -> ArchiveReport:
    """Mirror the small files of every finished run under `outputs`/<folder> (for each of `folders`) into `archive`,
    keeping the relative layout, with the run's coreset indices beside them (CORESET_FILE) where its cache still has
    them. A file already archived with the same bytes is left alone; one whose run was re-run (new bytes) is
    replaced, atomically, metrics.json last. A run folder missing one of the files, or in the middle of a re-run, is
    not archived and is named in the report's `skipped`. Runs in the archive but no longer under outputs/ are kept:
    that is the point."""
    outputs, archive = Path(outputs), Path(archive)
    rep = ArchiveReport()
    for folder in folders:
        root = outputs / folder
        if not root.is_dir():
            continue
        for metrics in sorted(root.rglob("metrics.json")):
            rec = run_summary(metrics)
            if rec is None:
                continue
            rel = metrics.parent.relative_to(outputs)
            why = _why_not(metrics.parent)
            if why:
                rep.skipped.append(f"{metrics.parent}: {why}")
                continue
            existed = (archive / rel / "metrics.json").exists()
            changed = False
            coreset = Path(str(rec.get("coreset") or ""))
            if rec.get("coreset") and coreset.is_file():
                changed |= _copy(coreset.read_bytes(), archive / rel / CORESET_FILE)
            for name in RUN_FILES:  # metrics.json last
                changed |= _copy((metrics.parent / name).read_bytes(), archive / rel / name)
            if not changed:
                rep.unchanged += 1
            else:
                (rep.updated if existed else rep.added).append(str(rel))
    return rep
