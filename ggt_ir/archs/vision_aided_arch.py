"""A "vision-aided" discriminator: trainable heads on the features of a frozen pretrained backbone.

Kumari et al., "Ensembling Off-the-shelf Models for GAN Training" (CVPR 2022) and Sauer et al.'s Projected
GAN / StyleGAN-T show that a discriminator reading a frozen self-supervised or ImageNet network's features
(DINO/DINOv2, CLIP, ConvNeXt) trains GANs faster and with fewer artifacts than one learned from pixels. Here:

* the backbone is loaded through its library's own loader, from a local folder or a hub id:
  ``backbone_library: transformers`` -> ``AutoModel.from_pretrained(backbone)`` (e.g. ``facebook/dinov2-small``,
  ``facebook/convnext-tiny-224``, or a folder written by ``save_pretrained``); ``backbone_library: timm`` ->
  ``timm.create_model(backbone, pretrained=True, features_only=True)`` (a timm name with
  ``backbone_weights: <local file>``, ``hf-hub:<id>`` or ``local-dir:<folder>``);
* it is frozen (no gradients to its weights, always in eval mode) but differentiable w.r.t. its input, so the
  generator's adversarial loss flows through it;
* the image in [0, 1] is resized to ``input_size`` (bilinear, antialiased) and normalised with the backbone's
  mean/std (timm's pretrained config; ImageNet's for transformers models, or ``mean``/``std``);
* from each layer in ``layers`` (transformers: index into ``hidden_states``, 0 = embeddings; timm: feature
  stage index), a spectrally normalised head (1x1 conv, LeakyReLU, 3x3 conv, LeakyReLU, 1x1 conv) maps the
  feature map to a patch realness map. ViT tokens (B, N, C) are reshaped to (B, C, H/p, W/p) (class and
  register tokens dropped). The output is the list of maps, one per layer; :class:`ggt_ir.losses.gan.GANLoss`
  averages them.

The state dict holds the heads and the (frozen) backbone, so a checkpoint resumes without the hub. Give the
optimizer ``[p for p in net_d.parameters() if p.requires_grad]`` (the heads only).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Head(nn.Sequential):
    def __init__(self, cin: int, channels: int):
        super().__init__(spectral_norm(nn.Conv2d(cin, channels, 1)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv2d(channels, channels, 3, 1, 1)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv2d(channels, 1, 1)))


class VisionAidedDiscriminator(nn.Module):
    def __init__(self, backbone: str = "facebook/dinov2-small", backbone_library: str = "transformers",
                 layers: Sequence[int] = (3, 6, 9, 12), head_channels: int = 64, input_size: int = 224,
                 backbone_weights: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        if backbone_library not in ("transformers", "timm"):
            raise ValueError(f"VisionAidedDiscriminator: backbone_library must be transformers or timm, "
                             f"got {backbone_library!r}")
        if not layers:
            raise ValueError("VisionAidedDiscriminator: layers is empty; name at least one backbone layer")
        self.library, self.layers, self.input_size = backbone_library, [int(i) for i in layers], int(input_size)
        if backbone_library == "transformers":
            self.backbone, default_mean, default_std = self._load_transformers(backbone, backbone_weights)
        else:
            self.backbone, default_mean, default_std = self._load_timm(backbone, backbone_weights)
        self.backbone.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(mean or default_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or default_std, dtype=torch.float32).view(1, 3, 1, 1))
        with torch.no_grad():  # the channel count of every chosen layer, from one small forward pass
            probe = self._features(torch.zeros(1, 3, self.input_size, self.input_size))
        self.heads = nn.ModuleList(_Head(f.shape[1], head_channels) for f in probe)

    # ------------------------------------------------------------------ backbones
    @staticmethod
    def _load_transformers(name: str, weights: Optional[str]):
        from transformers import AutoModel

        if weights:
            raise ValueError("VisionAidedDiscriminator: backbone_weights is for timm; with transformers give the "
                             "folder (or hub id) as backbone")
        try:
            model = AutoModel.from_pretrained(name)
        except OSError as e:
            raise FileNotFoundError(f"VisionAidedDiscriminator: cannot load backbone {name!r} with transformers "
                                    f"({str(e).splitlines()[0]}); give a local folder written by save_pretrained "
                                    "or a hub id present in the Hugging Face cache") from None
        return model, IMAGENET_MEAN, IMAGENET_STD

    def _load_timm(self, name: str, weights: Optional[str]):
        import timm

        kwargs = {}
        if weights:
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        try:
            model = timm.create_model(name, pretrained=True, features_only=True, out_indices=tuple(self.layers),
                                      **kwargs)
        except (RuntimeError, OSError, ValueError) as e:
            raise FileNotFoundError(f"VisionAidedDiscriminator: cannot load timm backbone {name!r} "
                                    f"({str(e).splitlines()[0]}); give backbone_weights: <local file>, or "
                                    "'local-dir:<folder>' / 'hf-hub:<id>' as backbone") from None
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return model, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, fixed normalisation statistics
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.library == "timm":
            return list(self.backbone(x))
        out = self.backbone(pixel_values=x, output_hidden_states=True)
        hidden = out.hidden_states
        feats = []
        for i in self.layers:
            if not -len(hidden) <= i < len(hidden):
                raise ValueError(f"VisionAidedDiscriminator: layer {i} is out of range; the backbone has "
                                 f"{len(hidden)} hidden states (0 = embeddings)")
            f = hidden[i]
            if f.dim() == 3:  # ViT tokens: keep the patch tokens, back to a map
                patch = getattr(self.backbone.config, "patch_size", None)
                gh, gw = x.shape[-2] // patch, x.shape[-1] // patch
                f = f[:, -gh * gw:].transpose(1, 2).reshape(f.shape[0], f.shape[2], gh, gw)
            feats.append(f)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(x.float(), size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return [head(f) for head, f in zip(self.heads, self._features(x))]
