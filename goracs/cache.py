"""One caching mechanism for every stage: a folder per (stage, hash of what determines the artifact), built in a
temporary folder and renamed into place when complete, so a killed stage never leaves a half artifact.

Concurrency: `lock(stage, key)` is an inter-process file lock per artifact. A caller holds it around "check,
compute, build", so two processes that need the same artifact build it once: the second waits, then finds it
done. The lock is an OS lock (flock), released when its holder exits or is killed. Temporary folders that a
killed builder left behind are removed by the next holder of the lock; a complete artifact is never removed or
replaced."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from goracs.io import config_hash, write_json

DONE = "_DONE"
log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive inter-process lock on `path` (created if missing) for the duration of the block."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


_MADE_BY: dict[str, Any] = {}


def made_by() -> dict[str, Any]:
    """What made an artifact: the code's commit (and whether the checkout had uncommitted changes), the time and
    the process."""
    import datetime as dt

    if not _MADE_BY:
        from goracs.runinfo import git_commit

        _MADE_BY.update(git_commit())
    return {**_MADE_BY, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid()}


def _scratch_of(final: Path) -> Path:
    """The scratch folder beside an artifact's folder (not a `*.tmp`: the lock holder's clean-up keeps it)."""
    return final.with_name(f".{final.name}.scratch")


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

    def scratch(self, stage: str, key: Any) -> Path:
        """A folder for a build's resumable progress (a training checkpoint): it survives a killed builder, so the
        next builder of the same key continues from it, and is removed once the artifact is complete."""
        return _scratch_of(self.path(stage, key))

    @contextlib.contextmanager
    def lock(self, stage: str, key: Any) -> Iterator[Path]:
        """Hold the artifact's lock (yields its final folder); leftovers of killed builders are cleared."""
        final = self.path(stage, key)
        with file_lock(final.with_name(f".{final.name}.lock")):
            self._clear_leftovers(final)
            yield final

    @staticmethod
    def _clear_leftovers(final: Path) -> None:
        # only the lock holder builds, so temporary folders of this key belong to builders that died
        for tmp in final.parent.glob(f".{final.name}.*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
        if (final / DONE).exists():  # a builder killed between completing the artifact and removing its scratch
            shutil.rmtree(_scratch_of(final), ignore_errors=True)
        if final.exists() and not (final / DONE).exists():  # an incomplete folder from an older version's build
            stale = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.stale.tmp")
            with contextlib.suppress(OSError):
                os.replace(final, stale)
                shutil.rmtree(stale, ignore_errors=True)

    @contextlib.contextmanager
    def build(self, stage: str, key: Any) -> Iterator[Path]:
        """Yield a fresh temporary folder; on success it becomes the artifact folder (with its key recorded).
        A complete folder already in place (another process finished first) is kept and ours is dropped."""
        final = self.path(stage, key)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        log.info("building %s/%s (pid %d)", stage, final.name, os.getpid())
        try:
            yield tmp
            write_json(tmp / "key.json", key)
            write_json(tmp / "made_by.json", made_by())
            (tmp / DONE).touch()
            if (final / DONE).exists():
                shutil.rmtree(_scratch_of(final), ignore_errors=True)
                return  # same key, same content: keep the folder a reader may already be using
            if final.exists():  # incomplete: move it aside atomically (never delete in place)
                stale = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.stale.tmp")
                with contextlib.suppress(OSError):
                    os.replace(final, stale)
                    shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / DONE).exists():  # not a concurrent winner: a real error
                    raise
            shutil.rmtree(_scratch_of(final), ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
