"""``regression``: pixel-space restorers (SwinIR, Restormer, NAFNet, ...): out = net(lq); loss(out, gt)."""
from __future__ import annotations

import torch

from ggt_ir.train.step_api import NONFINITE, Step


class RegressionStep(Step):
    def __init__(self, opt, accelerator, log):
        from ggt_ir.losses import build_losses

        self.opt, self.acc, t = opt, accelerator, opt.train
        net = self.load_generator(opt, log)
        self.num_params = sum(p.numel() for p in net.parameters())
        self.losses = {k: m.to(accelerator.device) for k, m in build_losses(t).items()}
        self.to_memory_format(*self.losses.values())
        self.prepare_generator(net)

    def describe(self) -> dict:
        return {"network_g": f"{self.opt.network_g['type']}, {self.num_params / 1e6:.3f} M parameters",
                "EMA": f"decay {self.ema.decay}" if self.ema else "off"}

    def train_step(self, batch: dict, it: int) -> dict:
        with self.acc.accumulate(self.net_g):
            out = self.net_g(batch["lq"])
            losses = {name: fn(out, batch["gt"]) for name, fn in self.losses.items()}
            if not self.losses_finite(losses, it):
                return NONFINITE
            self.optimizer_step(sum(losses.values()), self.optimizer, self.scheduler, self.net_g.parameters())
        self.update_ema()
        return {k: v.detach() for k, v in losses.items()}

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        with self.inference_network() as net:
            return net(lq).float().clamp(0, 1)

    def export(self, path_stem, it: int) -> list[str]:
        """``<stem>.safetensors`` with ``params.*`` (and ``params_ema.*``); ``.pth`` if logger.save_pth."""
        from ggt_ir.train.checkpoint import export_generator

        net = self.acc.unwrap_model(self.net_g)
        sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
        ema_sd = None
        if self.ema is not None:
            with self.ema_weights(net):
                ema_sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return export_generator(path_stem, sd, ema_sd, it, self.opt.network_g, self.opt.logger.save_pth)
