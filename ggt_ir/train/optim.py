"""Optimizer and learning-rate schedule from ``train.optim_g`` / ``train.scheduler`` / ``train.warmup_iter``."""
from __future__ import annotations

import bisect
import math

import torch


def build_optimizer(params, o) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: nothing for train.optim_g to optimize")
    if o.type == "AdamW8bit":  # optional: bitsandbytes' 8-bit AdamW (CUDA)
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError("optim type AdamW8bit needs bitsandbytes (pip install bitsandbytes); "
                              "or use type: AdamW") from e
        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    cls = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}[o.type]
    return cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


class LRFactor:
    """lr(it) / base_lr: linear warmup, then cosine to eta_min, multi-step decay, or constant.

    A picklable callable object (not a lambda), so LambdaLR's state dict stays loadable.
    """

    def __init__(self, train_opts, base_lr: float):
        s = train_opts.scheduler
        self.kind, self.total, self.warmup = s.type, train_opts.total_iter, train_opts.warmup_iter
        self.milestones, self.gamma = sorted(s.milestones), s.gamma
        self.min_factor = s.eta_min / base_lr if base_lr > 0 else 0.0

    def __call__(self, it: int) -> float:
        if self.warmup and it < self.warmup:
            return (it + 1) / self.warmup
        if self.kind == "CosineAnnealingLR":
            span = max(1, self.total - self.warmup)
            t = min(1.0, (it - self.warmup) / span)
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "MultiStepLR":
            return self.gamma ** bisect.bisect_right(self.milestones, it)
        return 1.0


def build_scheduler(optimizer, train_opts) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(train_opts, train_opts.optim_g.lr))
