"""Load generator weights from official releases and from our own exports.

Accepted files: ``.safetensors`` and ``.pth``/``.pt``/``.ckpt`` (torch pickles, read with ``weights_only=True``:
tensors, dicts, lists and numbers, never code; anything else is a clear error suggesting safetensors).
Accepted layouts:
BasicSR/KAIR ``{'params': sd}`` / ``{'params_ema': sd}``, ``{'state_dict': sd}`` (also Lightning,
whose keys carry a ``net.`` or ``model.`` prefix), a bare state dict, DDP's ``module.`` prefix, and
our safetensors export with ``params.<key>`` / ``params_ema.<key>``, and the ema-pytorch trainers' layout
(lucidrains' ``denoising-diffusion-pytorch``, FoundIR's ``model-2000.pt``): ``{'model': sd, 'ema': {'ema_model.<key>':
...}}``, where ``auto`` takes the EMA weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

PREFIXES = ("module.", "net.", "model.", "net_g.", "generator.")


@dataclass
class LoadReport:
    path: str
    param_key: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"loaded {self.path} [{self.param_key}]"
        if self.missing:
            s += f"; missing {len(self.missing)} keys: {', '.join(self.missing[:8])}{' ...' if len(self.missing) > 8 else ''}"
        if self.unexpected:
            s += f"; unexpected {len(self.unexpected)} keys: {', '.join(self.unexpected[:8])}{' ...' if len(self.unexpected) > 8 else ''}"
        return s


def read_state_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import pickle

    try:  # never run code from a weights file: tensors, dicts, lists and numbers only
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        what = lines[0][:160] if lines else "not a plain tensor file"
        raise ValueError(f"{path}: holds Python objects beyond tensors ({what}); ggt-ir loads weights without "
                         "running code from them. Convert it once where you trust it to safetensors, e.g. "
                         "safetensors.torch.save_file(state_dict, 'x.safetensors'), and load that") from None


def _ema_pytorch(raw: dict) -> dict | None:
    """The averaged weights of an ema-pytorch ``EMA`` state dict (``ema_model.<key>``), if ``raw['ema']`` is one."""
    ema = raw.get("ema")
    if isinstance(ema, dict) and any(k.startswith("ema_model.") for k in ema):
        return {k[len("ema_model."):]: v for k, v in ema.items() if k.startswith("ema_model.")}
    return None


def select_state_dict(raw: dict, param_key: str = "auto", source: str = "") -> tuple[dict, str]:
    """Pick the generator's state dict out of a checkpoint; returns (state_dict, key used)."""
    ema_pytorch = _ema_pytorch(raw)
    if ema_pytorch is not None and param_key in ("auto", "ema"):
        raw = {**raw, "ema": ema_pytorch}
    nested = {k for k in ("params_ema", "params", "state_dict", "model", "net_g") if isinstance(raw.get(k), dict)}
    if ema_pytorch is not None:
        nested.add("ema")
    flat_groups = {g for g in ("params_ema", "params") if any(k.startswith(g + ".") for k in raw)}
    if param_key in ("none", ""):
        sd, used = raw, "none"
    elif param_key != "auto":
        if param_key in nested:
            sd, used = raw[param_key], param_key
        elif param_key in flat_groups:
            sd, used = {k[len(param_key) + 1 :]: v for k, v in raw.items() if k.startswith(param_key + ".")}, param_key
        else:
            have = sorted(nested | flat_groups) or ["(a bare state dict)"]
            raise KeyError(f"{source}: no '{param_key}' in this checkpoint; it has {', '.join(have)}. "
                           "Set path.param_key_g to one of those, or 'auto'.")
    else:  # prefer EMA weights, as BasicSR's test does
        for k in ("params_ema", "ema", "params", "state_dict", "model", "net_g"):
            if k in nested:
                sd, used = raw[k], k
                break
            if k in flat_groups:
                sd, used = {n[len(k) + 1 :]: v for n, v in raw.items() if n.startswith(k + ".")}, k
                break
        else:
            sd, used = raw, "none"
    for prefix in PREFIXES:  # strip a prefix only when every key has it
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd, used


def load_weights(net: nn.Module, path: str | Path, param_key: str = "auto", strict: bool = True) -> LoadReport:
    sd, used = select_state_dict(read_state_file(path), param_key, str(path))
    own = net.state_dict()
    shape_errors = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in sd.items() if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    if shape_errors:
        raise ValueError(f"{path}: {len(shape_errors)} tensors have the wrong shape for this network "
                         f"(check network_g options): " + "; ".join(shape_errors[:5]))
    result = net.load_state_dict(sd, strict=False)
    report = LoadReport(str(path), used, list(result.missing_keys), list(result.unexpected_keys))
    if strict and (report.missing or report.unexpected):
        raise KeyError(f"{report}. Set path.strict_load_g: false to load anyway.")
    return report
