"""Trainer steps: what one optimization step means for a model family.

``model_type`` in the options picks a step from :data:`STEPS`. The generic trainer
(``trainer.py``) owns the loop, data, logging, checkpoints and validation; a step owns its
networks, losses and optimizers. A step class provides:

* ``__init__(opt, accelerator, log)``: build networks (loading ``path.pretrain_network_g``),
  losses, optimizers and schedulers; ``accelerator.prepare`` what trains; register every
  extra stateful object (schedulers, EMA) with ``accelerator.register_for_checkpointing`` so
  ``save_state``/``load_state`` restore it;
* ``train_step(batch) -> dict[str, Tensor]``: one micro-batch inside
  ``accelerator.accumulate(<every trained module>)``; returns detached losses named ``l_*``.
  Call :func:`check_finite` before ``backward``;
* ``restore(lq, sample=None) -> Tensor``: inference for validation (the EMA network when there is
  one); ``sample`` is the dataset's sample dict (prompt, category, key) for models that condition on it;
* ``export(path_stem, it)``: write the generator in its official layout (main process only);
* optional ``before_export()``: called on every rank before ``export`` (collectives, e.g. gathering
  FSDP/ZeRO-3 shards of the weights to export);
* ``describe() -> dict``: figures for the start-up banner (e.g. parameter counts);
* ``current_lr() -> float``.
"""
from __future__ import annotations

import torch

from ggt_ir.registry import Registry

STEPS = Registry("model_type", {
    "regression": "ggt_ir.train.steps:RegressionStep",
    # generative restorers (diffusers + peft): docs/generative.md
    "onestep_sd": "ggt_ir.generative.steps:OneStepSDStep",
    "editor_lora": "ggt_ir.generative.steps:EditorLoRAStep",
})


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(accelerator, losses: dict, it: int, skip: bool) -> bool:
    """True when every rank's losses are finite. Otherwise stop with a clear error, or (``skip``)
    return False on every rank so all skip the update together (no rank hangs in a collective)."""
    total = sum(v.detach().float() for v in losses.values())
    bad = (~torch.isfinite(total)).float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if bad.item() == 0:
        return True
    if skip:
        return False
    values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
    raise NonFiniteLossError(
        f"non-finite loss at iteration {it} ({values}) on at least one process. The weights were not "
        "updated. Lower train.optim_g.lr, enable train.grad_clip, use bf16 instead of fp16, or set "
        "train.skip_nonfinite: true to skip such steps; resume from the last checkpoint with --resume latest."
    )


class RegressionStep:
    """Pixel-space restorers (SwinIR, Restormer, NAFNet, ...): out = net(lq); loss(out, gt)."""

    def __init__(self, opt, accelerator, log):
        from ggt_ir.archs import build_network
        from ggt_ir.archs.weights import load_weights
        from ggt_ir.losses import build_losses
        from ggt_ir.train.ema import ModelEMA
        from ggt_ir.train.optim import build_optimizer, build_scheduler

        self.opt, self.acc, t = opt, accelerator, opt.train
        net = build_network(opt.network_g)
        if opt.path.pretrain_network_g:
            report = load_weights(net, opt.path.pretrain_network_g, opt.path.param_key_g, opt.path.strict_load_g)
            log.info(str(report))
        self.num_params = sum(p.numel() for p in net.parameters())
        self.losses = {k: m.to(accelerator.device) for k, m in build_losses(t).items()}
        optimizer = build_optimizer(net.parameters(), t.optim_g)
        self.scheduler = build_scheduler(optimizer, t)
        self.ema = ModelEMA(net, t.ema_decay).to(accelerator.device) if t.ema_decay > 0 else None
        self.net_g, self.optimizer = accelerator.prepare(net, optimizer)
        # the scheduler is stepped by us once per optimizer step (a prepared one would step per process)
        accelerator.register_for_checkpointing(self.scheduler)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        self.it = 0

    def describe(self) -> dict:
        return {"network_g": f"{self.opt.network_g['type']}, {self.num_params / 1e6:.3f} M parameters",
                "EMA": f"decay {self.ema.decay}" if self.ema else "off"}

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: dict, it: int) -> dict:
        acc, t = self.acc, self.opt.train
        with acc.accumulate(self.net_g):
            out = self.net_g(batch["lq"])
            losses = {name: fn(out, batch["gt"]) for name, fn in self.losses.items()}
            if not check_finite(acc, losses, it, t.skip_nonfinite):
                self.optimizer.zero_grad(set_to_none=True)
                return {"nonfinite": torch.ones(())}
            acc.backward(sum(losses.values()))
            if acc.sync_gradients and t.grad_clip > 0:
                acc.clip_grad_norm_(self.net_g.parameters(), t.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.scheduler.step()
        if acc.sync_gradients and self.ema is not None:
            self.ema.update(acc.unwrap_model(self.net_g))
        return {k: v.detach() for k, v in losses.items()}

    def eval_network(self) -> torch.nn.Module:
        return self.ema.shadow if self.ema is not None else self.acc.unwrap_model(self.net_g)

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        net = self.eval_network()
        was_training = net.training
        net.eval()
        with self.acc.autocast():
            out = net(lq)
        net.train(was_training)
        return out.float().clamp(0, 1)

    def export(self, path_stem, it: int) -> list[str]:
        """``<stem>.safetensors`` with ``params.*`` (and ``params_ema.*``); ``.pth`` if logger.save_pth."""
        from ggt_ir.train.checkpoint import export_generator

        sd = self.acc.unwrap_model(self.net_g).state_dict()
        ema_sd = self.ema.state_dict() if self.ema is not None else None
        return export_generator(path_stem, sd, ema_sd, it, self.opt.network_g, self.opt.logger.save_pth)
