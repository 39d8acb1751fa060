"""``foundir``: FoundIR's residual-diffusion objective (``ggt_ir/archs/foundir_arch.py``): the network computes its
own training loss, ``loss = net_g(lq, gt)`` (L1 between predicted and true residual at a uniform random timestep,
as the official ``train.py``); validation runs its sampler (``restore``)."""
from __future__ import annotations

import torch

from ggt_ir.train.step_api import NONFINITE, Step


class FoundIRStep(Step):
    network_type = "FoundIR"
    own_loss = "FoundIR's own residual loss"

    def __init__(self, opt, accelerator, log):
        self.opt, self.acc = opt, accelerator
        net = self.load_generator(opt, log)
        self.num_params = sum(p.numel() for p in net.parameters())
        self.prepare_generator(net)

    def describe(self) -> dict:
        return {"network_g": f"FoundIR, {self.num_params / 1e6:.3f} M parameters (residual diffusion)",
                "EMA": f"decay {self.ema.decay}" if self.ema else "off"}

    def train_step(self, batch: dict, it: int) -> dict:
        with self.acc.accumulate(self.net_g):
            losses = {"l_res": self.net_g(batch["lq"], batch["gt"])}
            if not self.losses_finite(losses, it):
                return NONFINITE
            self.optimizer_step(losses["l_res"], self.optimizer, self.scheduler, self.net_g.parameters())
        self.update_ema()
        return {k: v.detach() for k, v in losses.items()}

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        with self.inference_network() as net:
            return net.restore(lq, generator=torch.Generator(lq.device).manual_seed(self.opt.manual_seed)
                               ).float().clamp(0, 1)

    def export(self, path_stem, it: int) -> list[str]:
        from ggt_ir.train.steps.regression import RegressionStep

        return RegressionStep.export(self, path_stem, it)
