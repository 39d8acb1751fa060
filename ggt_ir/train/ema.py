"""Exponential moving average of a network's trainable weights (BasicSR's ``net_g_ema``; diffusers' ``EMAModel``).

One EMA for every family: it keeps fp32 copies of the parameters that train (all of a pixel network,
only the LoRA tensors of a generative restorer), never of frozen weights. :meth:`EMA.swapped_in` puts
the averages into the live module for validation and export and puts the trained values back after,
bit for bit. ``state_dict``/``load_state_dict`` let ``accelerator.register_for_checkpointing`` save and
restore it with every checkpoint.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module):
        """Inside: ``module`` carries the EMA weights; on exit its own weights are back exactly."""
        params = dict(module.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, v in self.shadow.items():
                params[n].copy_(v.to(params[n].device, params[n].dtype))
        try:
            yield module
        finally:
            with torch.no_grad():
                for n, v in backup.items():
                    params[n].copy_(v)

    def to(self, device) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in self.shadow if k not in state]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} trained tensors (e.g. {missing[0]}); "
                           "the checkpoint is from another network configuration")
        for k, v in self.shadow.items():  # keys beyond the trained ones (buffers in older checkpoints) are ignored
            v.copy_(state[k])
