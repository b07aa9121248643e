"""Atomic artifact writes and content-keyed cache folders: nothing is ever written half."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name created with mode 0666 so the umask applies (mkstemp would make a 0600 file)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (numpy scalars and arrays converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Save one array atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def save_parquet(path: str | os.PathLike, df) -> None:
    """Save a pandas DataFrame as Parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def config_hash(obj: Any, length: int = 16) -> str:
    """Stable hash of a JSON-able value (dict keys sorted): the cache key of an artifact."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _hash_memo_path() -> Path:
    root = os.environ.get("GORACS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "goracs")
    return Path(root) / "file_hashes.json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, memoised against (resolved path, size, mtime, inode) in
    $GORACS_CACHE/file_hashes.json, so an unchanged file is hashed once (a 1 GB file takes a few seconds)."""
    path = Path(path).resolve()
    st = os.stat(path)
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    memo_file = _hash_memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(str(path))
    if isinstance(hit, dict) and hit.get("stamp") == stamp:
        return str(hit["sha256"])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    memo[str(path)] = {"stamp": stamp, "sha256": digest}
    with contextlib.suppress(OSError):  # the memo only saves time; a lost update costs one re-hash
        write_json(memo_file, memo)
    return digest


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Identify an input file by its content (part of cache keys): name, size and SHA-256. A `touch` or a copy
    (anywhere, with any modification time) keeps the key; any change of a byte changes it."""
    p = Path(path)
    return {"name": p.name, "size": os.stat(p).st_size, "sha256": file_sha256(p)}


def load_samples(path: str | os.PathLike):
    """Samples from a .parquet, .json (records) or .jsonl file, with a clear error for other inputs."""
    import pandas as pd

    from goracs.errors import DataError

    p = Path(path)
    if not p.exists():
        raise DataError(f"sample file not found: {p}")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix == ".jsonl":
        return pd.read_json(p, lines=True)
    if p.suffix == ".json":
        return pd.read_json(p)
    raise DataError(f"{p}: unsupported sample file type (use .parquet, .json or .jsonl)")
