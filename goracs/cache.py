"""One caching mechanism for every stage: a folder per (stage, hash of what determines the artifact), built in a
temporary folder and renamed into place when complete, so a killed stage never leaves a half artifact."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from goracs.io import config_hash, write_json

DONE = "_DONE"


class StageCache:
    """Cache folders under `root/<stage>/<key>`; a folder counts only once its `_DONE` marker exists."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, stage: str, key: Any) -> Path:
        """The folder of the artifact determined by `key` (any JSON-able value)."""
        return self.root / stage / config_hash(key)

    def done(self, stage: str, key: Any) -> bool:
        """Whether the artifact exists and is complete."""
        return (self.path(stage, key) / DONE).exists()

    @contextlib.contextmanager
    def build(self, stage: str, key: Any) -> Iterator[Path]:
        """Yield a fresh temporary folder; on success it becomes the artifact folder (with its key recorded)."""
        final = self.path(stage, key)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        try:
            yield tmp
            write_json(tmp / "key.json", key)
            (tmp / DONE).touch()
            if (final / DONE).exists():
                # another process (a parallel job of the same sweep) finished the same artifact first: keep its
                # folder, which a reader may already be using, and drop ours (same key, same content)
                return
            if final.exists():  # an incomplete leftover from a killed run
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
