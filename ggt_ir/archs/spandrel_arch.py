"""The architectures users bring: any image-to-image architecture spandrel knows, trainable like our own.

spandrel (github.com/chaiNNer-org/spandrel, MIT) implements ~40 restoration/SR architectures (ESRGAN/RRDBNet,
HAT, DAT, SCUNet, SPAN, SwinIR, Swin2SR, OmniSR, RealCUGAN, ...) and detects the architecture and its
hyper-parameters from a checkpoint. Two ways in, through ``network_g``:

* ``{type: Spandrel, arch: HAT, <constructor arguments>}`` builds a fresh network of that architecture
  (spandrel's class and argument names; ``arch`` is spandrel's id, and ``RRDBNet`` also takes BasicSR's
  ``num_in_ch, num_out_ch, num_feat, num_block, num_grow_ch, scale``, including scale 1/2 with pixel-unshuffle);
* ``{type: Spandrel}`` with ``path.pretrain_network_g: <any checkpoint spandrel recognises>`` (an OpenModelDB
  file, a BasicSR ``{'params_ema': ...}`` release, our own export): the network is built when the weights load,
  with the detected architecture (so build it, then load; the optimizer comes after).

``extra_arches: true`` adds spandrel-extra-arches (``pip install ggt-ir[spandrel-extra]``; non-commercial
licenses: CodeFormer, SRFormer, MPRNet, ...).

The module's state dict has the architecture's own keys (the ones spandrel detects and OpenModelDB files
carry): exports reload into ``{type: Spandrel}`` or into spandrel directly. A checkpoint in another layout spandrel
converts (e.g. BasicSR's new-arch RRDBNet keys into spandrel's ESRGAN) loads too. ``forward`` pads the input to
the architecture's size requirements (reflect, as spandrel's call API) and crops the output; ``pad_multiple``
and ``scale`` tell the tiler and the loader the same. Parameters that only serve inference (SPAN's
re-parameterised ``eval_conv``) are frozen, so DDP sees no unused gradients.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import math
from typing import Optional

import torch
from torch import nn

ALIASES = {"RRDBNet": "ESRGAN"}
# parameters recomputed from others at inference: excluded from training
_INFERENCE_ONLY = {"SPAN": ("eval_conv",)}  # module names, at any depth


def _registry(extra_arches: bool):
    from spandrel import MAIN_REGISTRY

    if not extra_arches:
        return MAIN_REGISTRY
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:
        raise ImportError("network_g.extra_arches: true needs spandrel-extra-arches "
                          "(pip install 'ggt-ir[spandrel-extra]'; note its non-commercial licenses)") from None
    reg = MAIN_REGISTRY.copy()
    reg.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return reg


def architecture_ids(extra_arches: bool = False) -> list[str]:
    return sorted(a.architecture.id for a in _registry(extra_arches).architectures())


def _architecture(arch: str, extra_arches: bool):
    reg = _registry(extra_arches)
    arch_id = ALIASES.get(arch, arch)
    support = reg.get(arch_id)
    if support is None:
        ids = architecture_ids(extra_arches)
        close = difflib.get_close_matches(arch, ids + list(ALIASES), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        extra = "" if extra_arches else " (extra_arches: true adds spandrel-extra-arches)"
        raise ValueError(f"network_g.arch: spandrel has no architecture {arch!r}.{hint} Known{extra}: {', '.join(ids)}")
    return support.architecture


def _model_class(architecture) -> type:
    """The nn.Module class an Architecture builds (each spandrel arch module exports it next to the Arch)."""
    module = importlib.import_module(type(architecture).__module__)
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
    raise TypeError(f"spandrel architecture {architecture.id}: no model class found in {module.__name__}")


def _rrdbnet_kwargs(kwargs: dict) -> dict:
    """BasicSR's RRDBNet arguments -> spandrel's ESRGAN (old-arch) arguments; spandrel's own pass through."""
    basicsr = {"num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch", "scale"}
    if not (set(kwargs) & (basicsr - {"scale"})):
        return kwargs
    bad = set(kwargs) - basicsr
    if bad:
        raise ValueError(f"network_g: RRDBNet takes BasicSR's {sorted(basicsr)} or spandrel's ESRGAN arguments, "
                         f"not both (got {sorted(bad)})")
    if kwargs.get("num_grow_ch", 32) != 32:
        raise ValueError("network_g.num_grow_ch: spandrel's RRDBNet has a fixed growth of 32 channels")
    scale, c_in = int(kwargs.get("scale", 4)), int(kwargs.get("num_in_ch", 3))
    if scale not in (1, 2, 4, 8):
        raise ValueError(f"network_g.scale: RRDBNet supports 1, 2, 4 or 8, got {scale}")
    shuffle = {1: 4, 2: 2}.get(scale)  # BasicSR: pixel-unshuffle, then the x4 body
    return {"in_nc": c_in * (shuffle**2 if shuffle else 1), "out_nc": int(kwargs.get("num_out_ch", 3)),
            "num_filters": int(kwargs.get("num_feat", 64)), "num_blocks": int(kwargs.get("num_block", 23)),
            "scale": 4 if shuffle else scale, "shuffle_factor": shuffle}


class Spandrel(nn.Module):
    def __init__(self, arch: Optional[str] = None, extra_arches: bool = False, **kwargs):
        super().__init__()
        self.extra_arches = extra_arches
        self.net: Optional[nn.Module] = None
        self.arch: Optional[str] = None
        self.scale, self.pad_multiple, self.min_size, self.square = 1, 1, 0, False
        if arch is None:
            if kwargs:
                raise ValueError(f"network_g: {{type: Spandrel}} without 'arch' takes no constructor arguments "
                                 f"(got {sorted(kwargs)}); give arch: <spandrel id>, or only "
                                 "path.pretrain_network_g to detect the architecture from the checkpoint")
        else:
            architecture = _architecture(arch, extra_arches)
            cls = _model_class(architecture)
            if architecture.id == "ESRGAN":
                kwargs = _rrdbnet_kwargs(kwargs)
            self._check_kwargs(cls, kwargs, arch)
            net = cls(**kwargs)
            # spandrel's loader on our own weights gives the descriptor: scale and size requirements
            self._adopt(architecture.load(net.state_dict()), model=net)
        self.register_state_dict_post_hook(Spandrel._own_keys)
        self.register_load_state_dict_pre_hook(Spandrel._prepare_load)

    @staticmethod
    def _check_kwargs(cls, kwargs: dict, arch: str) -> None:
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        valid = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for k in kwargs:
            if k not in valid:
                close = difflib.get_close_matches(k, valid, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"network_g.{k}: not an argument of spandrel's {arch}{hint}; valid: {', '.join(valid)}")

    def _adopt(self, descriptor, model: Optional[nn.Module] = None) -> None:
        from spandrel import ImageModelDescriptor

        if not isinstance(descriptor, ImageModelDescriptor):
            raise TypeError(f"spandrel architecture {descriptor.architecture.id} is not an image-to-image model "
                            "(inpainting and other kinds are not supported)")
        self.net = model if model is not None else descriptor.model
        self.arch = descriptor.architecture.id
        self.scale = int(descriptor.scale)
        req = descriptor.size_requirements
        self.pad_multiple, self.min_size, self.square = int(req.multiple_of), int(req.minimum), bool(req.square)
        self._call = getattr(descriptor, "_call_fn", None) or (lambda m, x: m(x))
        for name, p in self.net.named_parameters():
            if any(f".{m}." in f".{name}" for m in _INFERENCE_ONLY.get(self.arch, ())):
                p.requires_grad_(False)
        self.net.train(self.training)

    @classmethod
    def from_checkpoint(cls, path, extra_arches: bool = False) -> "Spandrel":
        """The detected architecture with the checkpoint's weights (what ``{type: Spandrel}`` + load does)."""
        from ggt_ir.archs.weights import load_weights

        net = cls(extra_arches=extra_arches)
        load_weights(net, path, strict=True)
        return net

    # ------------------------------------------------------------------ state-dict keys = the architecture's
    @staticmethod
    def _own_keys(module, state_dict, prefix, local_metadata) -> None:
        inner = prefix + "net."
        for k in [k for k in state_dict if k.startswith(inner)]:
            state_dict[prefix + k[len(inner):]] = state_dict.pop(k)

    @staticmethod
    def _prepare_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs) -> None:
        ours = {k[len(prefix):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
        if module.net is None:
            module._adopt(module._detect(ours))
        own = set(module.net.state_dict())
        if set(ours) != own:
            ours = module._convert(ours, own)
        for k, v in ours.items():
            state_dict[prefix + "net." + k] = v

    def _detect(self, sd: dict):
        """The descriptor of a state dict (spandrel's detection); keys may have lost a 'model.' prefix to
        ``load_weights``'s prefix stripping (old-arch ESRGAN files are all 'model.*')."""
        from spandrel import UnsupportedModelError

        reg = _registry(self.extra_arches)
        for candidate in (sd, {"model." + k: v for k, v in sd.items()}):
            try:
                return reg.load(dict(candidate))
            except UnsupportedModelError:
                continue
            except (KeyError, ValueError, RuntimeError) as e:  # detected, but the hyper-parameters do not fit
                raise ValueError(f"spandrel detected an architecture but could not build it from these weights: {e}") from None
        raise ValueError("spandrel does not recognise this checkpoint's architecture; give network_g.arch and its "
                         "arguments, or set extra_arches: true for spandrel-extra-arches")

    def _convert(self, sd: dict, own: set) -> dict:
        """A state dict in another layout of the same architecture -> ours (spandrel's conversion), else as is
        (load_state_dict then reports the missing / unexpected keys)."""
        prefixed = {"model." + k: v for k, v in sd.items()}
        if set(prefixed) == own:
            return prefixed
        try:
            desc = self._detect(sd)
        except ValueError:
            return sd
        if desc.architecture.id == self.arch and set(desc.model.state_dict()) == own:
            return dict(desc.model.state_dict())
        return sd

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("network_g {type: Spandrel} has no architecture yet: give network_g.arch, or load "
                               "a checkpoint (path.pretrain_network_g) before running it")
        h, w = x.shape[-2:]
        th, tw = max(h, self.min_size), max(w, self.min_size)
        th, tw = math.ceil(th / self.pad_multiple) * self.pad_multiple, math.ceil(tw / self.pad_multiple) * self.pad_multiple
        if self.square:
            th = tw = max(th, tw)
        if (th, tw) != (h, w):
            x = self._pad(x, th - h, tw - w)
        out = self._call(self.net, x)
        return out[..., : h * self.scale, : w * self.scale]

    @staticmethod
    def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        """Reflect, then replicate beyond what reflection allows (spandrel's pad_tensor)."""
        rh, rw = min(ph, x.shape[-2] - 1), min(pw, x.shape[-1] - 1)
        x = torch.nn.functional.pad(x, (0, rw, 0, rh), mode="reflect")
        if ph > rh or pw > rw:
            x = torch.nn.functional.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")
        return x

    def extra_repr(self) -> str:
        return f"arch={self.arch}, scale={self.scale}, pad_multiple={self.pad_multiple}"
