"""LoRA plumbing shared by the generative restorers.

* target discovery by name pattern and region (OSEDiff puts separate adapters on the UNet's
  encoder / decoder / other blocks and one on the VAE encoder);
* LoRA-only module state: a module whose ``state_dict`` holds only its ``lora_`` tensors, so
  ``accelerator.save_state``/``load_state`` checkpoint and restore exactly the trained weights
  (and not gigabytes of frozen ones) -- the failure of diffusers#12689 is that they were not restored;
* export in the standard peft layout (``adapter_config.json`` + ``adapter_model.safetensors``,
  loadable with ``peft.PeftModel.from_pretrained``) and loading it back; merging into base weights.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

LORA_MARK = ".lora_"

# OSEDiff's choice of layers (attention projections, feed-forward, convolutions): cswry/OSEDiff osediff.py:45
# (its substring grep on parameter names; conv_in is LoRA-wrapped there too, and also trained fully)
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
                "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]
VAE_ENCODER_TARGETS = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v",
                       "to_out.0", "quant_conv"]


def find_targets(model: nn.Module, patterns: list[str], prefixes: tuple[str, ...] | None = None) -> list[str]:
    """Full names of Linear/Conv2d modules whose name ends with one of ``patterns`` (and starts with a prefix)."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or not name:
            continue
        if prefixes is not None and not name.startswith(prefixes):
            continue
        if any(name == p or name.endswith("." + p) for p in patterns):
            out.append(name)
    return out


def unet_regions(names: list[str], split: bool = True) -> dict[str, list[str]]:
    """{adapter name: module names}: encoder = down blocks + conv_in, decoder = up blocks + conv_out."""
    if not split:
        return {"default": list(names)} if names else {}
    regions = {"default_encoder": [], "default_decoder": [], "default_others": []}
    for n in names:
        if n.startswith(("down_blocks.", "conv_in")):
            regions["default_encoder"].append(n)
        elif n.startswith(("up_blocks.", "conv_out")):
            regions["default_decoder"].append(n)
        else:
            regions["default_others"].append(n)
    return {k: v for k, v in regions.items() if v}


def add_adapters(model, regions: dict[str, list[str]], rank: int, alpha: float | None, init="gaussian") -> list[str]:
    """One peft LoRA adapter per region on a diffusers model; all of them active."""
    import warnings

    from peft import LoraConfig

    for name, targets in regions.items():
        cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights=init,
                         target_modules=targets)
        with warnings.catch_warnings():  # "multiple adapters in the model": intended (one per region)
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            model.add_adapter(cfg, adapter_name=name)
    names = list(regions)
    if names:
        activate(model, names)
    return names


def activate(model, names: list[str]) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.set_adapter([n for n in names if n in m.lora_A] or names)


def is_trained(name: str, full: tuple[str, ...] = ()) -> bool:
    """A LoRA tensor, or a tensor of a fully trained module (``full``: name prefixes, e.g. ``unet.conv_in.``)."""
    dotted = "." + name
    return LORA_MARK in dotted or any("." + f in dotted for f in full)


def mark_only_lora_trainable(module: nn.Module, fp32: bool = True, full: tuple[str, ...] = ()) -> int:
    """requires_grad only on LoRA tensors (and on the modules named by the ``full`` prefixes), which are kept
    fp32 (frozen weights may be bf16/fp16 or quantized)."""
    n = 0
    for name, p in module.named_parameters():
        trained = is_trained(name, full)
        p.requires_grad_(trained)
        if trained:
            n += p.numel()
            if fp32 and p.dtype != torch.float32:
                p.data = p.data.float()
    return n


def keep_lora_state_only(module: nn.Module, full: tuple[str, ...] = ()) -> None:
    """``module.state_dict()`` keeps only the trained tensors (LoRA + the ``full`` prefixes); ``load_state_dict``
    does not miss frozen ones. Inside :func:`full_state_dict` the state dict is complete (FSDP's RAM-efficient
    loading snapshots and reloads the whole model through ``state_dict``).

    Works through DDP wrappers too (hooks run during the recursive state-dict walk)."""
    module._ggt_full_state = False

    def drop_frozen(mod, state, prefix, _meta):
        if mod.__dict__.get("_ggt_full_state"):
            return
        for k in [k for k in state if k.startswith(prefix) and not is_trained(k[len(prefix):], full)]:
            del state[k]

    def ignore_frozen_missing(mod, incompatible):
        if mod.__dict__.get("_ggt_full_state"):
            return
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if is_trained(k, full)]

    module.register_state_dict_post_hook(drop_frozen)
    module.register_load_state_dict_post_hook(ignore_frozen_missing)


@contextlib.contextmanager
def full_state_dict(module: nn.Module):
    """Inside: ``module.state_dict()`` holds every tensor, frozen ones included (see :func:`keep_lora_state_only`)."""
    before = module.__dict__.get("_ggt_full_state", False)
    module._ggt_full_state = True
    try:
        yield module
    finally:
        module._ggt_full_state = before


def adapter_summary(model) -> dict:
    out = {}
    for name, cfg in getattr(model, "peft_config", {}).items():
        targets = sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules
        out[name] = {"rank": cfg.r, "alpha": cfg.lora_alpha, "num_targets": len(targets), "target_modules": targets}
    return out


def export_peft_adapter(model, adapter_name: str, folder: str | Path, state: dict | None = None) -> Path:
    """``folder/adapter_config.json`` + ``adapter_model.safetensors`` (peft's own layout). ``state``: the
    model's (gathered) state dict to take the tensors from, default its own."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = get_peft_model_state_dict(model, state_dict=state, adapter_name=adapter_name)
    save_file({"base_model.model." + k: v.detach().float().cpu().contiguous() for k, v in sd.items()},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = model.peft_config[adapter_name]
    cfg.save_pretrained(str(folder))
    return folder


def load_peft_adapter(model, folder: str | Path, adapter_name: str) -> None:
    """Inverse of :func:`export_peft_adapter` (the same files ``PeftModel.from_pretrained`` reads)."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    import warnings

    cfg = LoraConfig.from_pretrained(str(folder))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")
        model.add_adapter(cfg, adapter_name=adapter_name)
    for n, p in model.named_parameters():  # fp32 before the values go in (a bf16 base would round them)
        if LORA_MARK in "." + n and f".{adapter_name}." in n + ".":
            p.data = p.data.float()
    sd = {k.removeprefix("base_model.model."): v for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    res = set_peft_model_state_dict(model, sd, adapter_name=adapter_name)
    unexpected = getattr(res, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"{folder}: {len(unexpected)} adapter tensors match no layer of the model "
                         f"(e.g. {unexpected[0]}); wrong base model?")


def merge_and_strip(model: nn.Module) -> int:
    """Merge every LoRA adapter into its base layer and remove the peft wrappers. Returns layers merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, m in layers:
        m.merge(adapter_names=list(m.lora_A.keys()))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.get_base_layer())
    if hasattr(model, "peft_config"):
        model.peft_config = {}
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
    return len(layers)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False))
