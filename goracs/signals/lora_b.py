"""The LoRA B matrix that the gradient norms are taken with respect to: a seeded LoRA when the model has none, the
B linear of one decoder layer's module and its scaling, gradients for it alone, and a hook capturing its input
(the LoRA-A output) and its output."""

from __future__ import annotations

import contextlib
import re

import torch

from goracs.models import add_lora
from goracs.signals.common import SignalError


def ensure_lora(model, lora_seed: int = 0, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                target_modules: tuple[str, ...] = ("q_proj", "v_proj")):
    """Return the model itself when it carries LoRA adapters, else wrap it (in place, seeded A init)."""
    if hasattr(model, "peft_config") or any(hasattr(m, "lora_A") for m in model.modules()):
        return model  # a PeftModel, or a base model whose layers already carry injected LoRA adapters
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(lora_seed))
        return add_lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=tuple(target_modules))


def lora_b_module(model, layer: int = -1, module: str = "v_proj") -> tuple[torch.nn.Module, int]:
    """The LoRA B linear of `module` in decoder layer `layer` (negative counts from the end), and the index."""
    found: dict[int, torch.nn.Module] = {}
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] == module and hasattr(mod, "lora_B"):
            m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
            if m:
                found[int(m.group(1))] = mod
    if not found:
        raise SignalError(f"the model has no LoRA adapter on a module named '{module}' inside its decoder layers "
                          "(check lora.target_modules)")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n_layers = int(getattr(base.config, "num_hidden_layers", max(found) + 1))
    idx = int(layer) + n_layers if int(layer) < 0 else int(layer)
    if not 0 <= idx < n_layers:
        raise SignalError(f"grad_layer={layer} is out of range for a model with {n_layers} decoder layers")
    if idx not in found:
        raise SignalError(f"decoder layer {idx} (grad_layer={layer}) has no LoRA adapter on '{module}'")
    mod = found[idx]
    adapters = list(getattr(mod, "active_adapters", ["default"]))
    if len(adapters) != 1:
        raise SignalError(f"layer {idx} {module} has {len(adapters)} active LoRA adapters {adapters}; need one")
    ad = adapters[0]
    if getattr(mod, "merged", False):
        raise SignalError(f"the LoRA adapter of layer {idx} {module} is merged into the weights; unmerge it first")
    if ad in getattr(mod, "lora_variant", {}):
        raise SignalError(f"layer {idx} {module} uses a LoRA variant ({type(mod.lora_variant[ad]).__name__}); "
                          "only vanilla LoRA is supported")
    return mod.lora_B[ad], idx


def lora_scaling(model, lora_b: torch.nn.Module) -> float:
    """The LoRA scaling (alpha / r) of the adapter whose B linear is `lora_b`."""
    for mod in model.modules():
        if hasattr(mod, "lora_B"):
            for ad, lin in mod.lora_B.items():
                if lin is lora_b:
                    return float(mod.scaling[ad])
    raise SignalError("could not find the LoRA layer that owns the chosen B matrix")


@contextlib.contextmanager
def grad_only_for(model, param: torch.nn.Parameter):
    """Eval mode and requires_grad on `param` alone (backward stops at the chosen layer); restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        param.requires_grad_(True)
        model.eval()
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(training)


class Capture:
    """Forward hook keeping the input and output of one module (the LoRA B linear)."""

    def __init__(self, module: torch.nn.Module):
        self.a = self.out = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, mod, inputs, output):
        self.a, self.out = inputs[0], output

    def close(self):
        self.handle.remove()
        self.a = self.out = None
