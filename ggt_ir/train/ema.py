"""Exponential moving average of a network's weights (BasicSR's ``net_g_ema``)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps a frozen copy ``shadow``; ``update`` moves it towards the trained weights.

    Has ``state_dict``/``load_state_dict`` so ``accelerator.register_for_checkpointing`` saves and
    restores it with every checkpoint.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.shadow.parameters(), model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)
        for e, b in zip(self.shadow.buffers(), model.buffers()):
            e.copy_(b)

    def to(self, device) -> "ModelEMA":
        self.shadow.to(device)
        return self

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
