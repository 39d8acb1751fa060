"""Variational score distillation (VSD) regulariser for one-step SD restorers (as in OSEDiff).

One extra UNet loaded from the same base weights holds both scores:

* the **real score**: the frozen base UNet (its LoRA switched off), with classifier-free guidance
  (``cfg``, negative prompt);
* the **fake score**: the same UNet with a trainable LoRA adapter ``vsd_fake``, trained with a plain
  diffusion loss on the (detached) generator latents -- its own optimizer and schedule.

Sharing the frozen weights saves one UNet of memory compared with OSEDiff's separate ``unet_fix`` and
``unet_update``. As OSEDiff (cswry/OSEDiff osediff.py:206-243) the generator gets ``||z - sg(z - g)||^2``
(mean, no 1/2) with ``g = (x0_fake - x0_real) / mean|z - x0_real|`` (the distribution-matching gradient),
at t in [min_timestep, max_timestep) = [20, 980); the fake score's diffusion loss draws t in
[diffusion_min_timestep, diffusion_max_timestep) = [0, 1000) (osediff.py:183). The noising and every x0 are
computed in fp32; with the generator's ``precise_x0`` the UNet's ``conv_out`` runs in fp32 as well.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.generative import lora as L


@contextlib.contextmanager
def adapters_off(model: nn.Module):
    """Run the base weights only. peft's ``enable_adapters(False)`` also flips requires_grad on the
    LoRA tensors (which DDP has already registered), so only the forward switch is toggled here."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m in layers:
            m._disable_adapters = False


class VSDRegularizer(nn.Module):
    def __init__(self, generator, opts):
        super().__init__()
        from diffusers import UNet2DConditionModel

        from ggt_ir.generative.onestep_sd import SD_SUBFOLDERS
        from ggt_ir.generative.pretrained import load_component

        c = generator.config
        self.opts = opts
        self.dtype_ = generator.dtype_
        self.unet = load_component(UNet2DConditionModel, c["pretrained"], "unet", revision=c["revision"],
                                   variant=c["variant"], allow_download=c["allow_download"],
                                   all_subfolders=SD_SUBFOLDERS, torch_dtype=self.dtype_)
        self.unet.requires_grad_(False)
        names = L.find_targets(self.unet, opts.lora_targets or L.UNET_TARGETS)
        L.add_adapters(self.unet, {"vsd_fake": names}, opts.lora_rank, opts.lora_alpha)
        if c.get("precise_x0"):
            from ggt_ir.generative.memory import run_in_fp32

            run_in_fp32(self.unet.conv_out)
        self.num_trainable = L.mark_only_lora_trainable(self)
        L.keep_lora_state_only(self)
        if c.get("gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()
        self.register_buffer("alphas_cumprod", generator.alphas_cumprod.clone(), persistent=False)
        self.prediction_type = generator.prediction_type
        n = len(self.alphas_cumprod)
        if not 0 <= opts.min_timestep < opts.max_timestep <= n:
            raise ValueError(f"train.vsd_opt: need 0 <= min_timestep < max_timestep <= {n}")
        if not 0 <= opts.diffusion_min_timestep < opts.diffusion_max_timestep <= n:
            raise ValueError(f"train.vsd_opt: need 0 <= diffusion_min_timestep < diffusion_max_timestep <= {n}")

    def _a(self, t, ref):
        return self.alphas_cumprod.to(ref.device)[t].float().view(-1, 1, 1, 1)

    def _x0(self, pred, z, t):
        a = self._a(t, z)
        if self.prediction_type == "epsilon":
            return (z - (1 - a).sqrt() * pred.float()) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * z - (1 - a).sqrt() * pred.float()
        return pred.float()

    def _sample_t(self, n, device, lo: int, hi: int):
        return torch.randint(lo, hi, (n,), device=device, dtype=torch.long)

    def _unet(self, z, t, emb):
        return self.unet(z.to(self.dtype_), t, encoder_hidden_states=emb.to(self.dtype_)).sample

    def vsd_loss(self, latents: torch.Tensor, emb: torch.Tensor, neg_emb: torch.Tensor) -> torch.Tensor:
        """Generator loss; gradients reach ``latents`` only (call on the unwrapped module)."""
        z = latents.float()
        t = self._sample_t(z.shape[0], z.device, self.opts.min_timestep, self.opts.max_timestep)
        noise = torch.randn_like(z)
        with torch.no_grad():
            a = self._a(t, z)
            noisy = a.sqrt() * z + (1 - a).sqrt() * noise
            with adapters_off(self.unet):
                pred = self._unet(torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([neg_emb, emb]))
                uncond, cond = pred.float().chunk(2)
                x0_real = self._x0(uncond + self.opts.cfg * (cond - uncond), noisy, t)
            x0_fake = self._x0(self._unet(noisy, t, emb), noisy, t)
            w = (z - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            grad = torch.nan_to_num((x0_fake - x0_real) / w)
        return F.mse_loss(z, (z - grad).detach())

    def forward(self, latents: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Fake-score diffusion loss on detached generator latents (trains the ``vsd_fake`` LoRA)."""
        z = latents.detach().float()
        t = self._sample_t(z.shape[0], z.device, self.opts.diffusion_min_timestep, self.opts.diffusion_max_timestep)
        noise = torch.randn_like(z)
        a = self._a(t, z)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        pred = self._unet(noisy, t, emb.detach()).float()
        if self.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * z
        elif self.prediction_type == "epsilon":
            target = noise
        else:
            target = z
        return F.mse_loss(pred, target)
