"""``gan``: a generator trained with pixel/perceptual losses and a discriminator (Real-ESRGAN, SwinIR-GAN, ...).

One iteration is BasicSR's ``SRGANModel`` / ``RealESRGANModel.optimize_parameters``:

1. (``train.degradation``) Real-ESRGAN's second-order degradation of the batch on the device
   (``ggt_ir/data/device_degradation.py``), seeded from (``manual_seed``, iteration, rank): exact on resume;
2. ``out = net_g(lq)``; when ``it % net_d_iters == 0 and it > net_d_init_iters``, a generator update with the
   discriminator frozen: ``train.pixel_opt`` + ``train.losses`` (VGG perceptual, LPIPS, ...) + the adversarial
   term of ``train.gan_opt`` (``GANLoss``); otherwise only the generator's schedule advances (its learning rate
   follows the iteration, as BasicSR steps every scheduler every iteration);
3. a discriminator update on ``net_d(gt)`` and ``net_d(out.detach())`` (two passes, as BasicSR), plus the WGAN-GP
   penalty when ``gan_opt.gp_weight > 0``; then the generator's EMA.

Both optimizers go through the shared :func:`ggt_ir.train.step_api.optimizer_step` inside
``accelerator.accumulate(net_g, net_d)``. Real-ESRGAN's ``l1_gt_usm`` / ``percep_gt_usm`` / ``gan_gt_usm`` pick
the USM-sharpened target per loss group. fp16: accelerate keeps one GradScaler for all prepared optimizers; the
discriminator gets its own (swapped in for its update, checkpointed), so an overflow on one side does not shrink
the other's loss scale; bf16 and fp32 use none. ``save_state`` covers D, its optimizer, schedule and scaler; the
export is the generator only (``net_g_<iter>.safetensors``), so ``load_restorer`` / ``ggt-ir eval --run`` /
``ggt-ir restore`` treat a GAN run like any pixel network.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Dict, Optional

import torch

from ggt_ir.config import OptionsError, at_least
from ggt_ir.data.device_degradation import DeviceDegradationOptions
from ggt_ir.train.options import OptimOptions, Options, PathOptions, SchedulerOptions, TrainOptions
from ggt_ir.train.step_api import NONFINITE, Step


@dataclass
class GANPathOptions(PathOptions):
    pretrain_network_d: Optional[str] = None  # e.g. RealESRGAN_x4plus_netD.pth (Real-ESRGAN's finetune recipe)
    param_key_d: str = "auto"
    strict_load_d: bool = True


@dataclass
class GANTrainOptions(TrainOptions):
    optim_d: OptimOptions = field(default_factory=lambda: OptimOptions(type="Adam", lr=1e-4))
    scheduler_d: Optional[SchedulerOptions] = None  # default: train.scheduler (with optim_d's lr)
    gan_opt: Optional[Dict[str, Any]] = None  # {type: GANLoss, gan_type, loss_weight, ...}; checked by LOSSES
    net_d_iters: int = at_least(1, 1)  # update G every net_d_iters iterations (D every iteration)
    net_d_init_iters: int = at_least(0, 0)  # D-only iterations at the start
    l1_gt_usm: bool = False  # train.pixel_opt against the USM-sharpened GT (Real-ESRGAN: true)
    percep_gt_usm: bool = False  # train.losses against the USM-sharpened GT (Real-ESRGAN: true)
    gan_gt_usm: bool = False  # D's real images USM-sharpened (Real-ESRGAN: false)
    degradation: Optional[DeviceDegradationOptions] = None  # on-device Real-ESRGAN degradation


@dataclass
class GANOptions(Options):
    network_d: Dict[str, Any] = field(default_factory=dict)  # {type: UNetDiscriminatorSN, ...}; checked by ARCHS
    path: GANPathOptions = field(default_factory=GANPathOptions)
    train: GANTrainOptions = field(default_factory=GANTrainOptions)


def _seed(manual_seed: int, it: int, micro: int, rank: int) -> int:
    """One degradation seed per (run seed, iteration, micro-batch, rank): resumed runs draw the same LQ."""
    return (manual_seed * 1_000_003 + it * 4_099 + micro * 131 + rank * 7) % (2 ** 62)


def _as_list(pred) -> list:
    """A discriminator's output: one map, or one per scale (multi-scale PatchGAN)."""
    return [pred] if isinstance(pred, torch.Tensor) else list(pred)


class GANStep(Step):
    options = GANOptions

    @classmethod
    def check_options(cls, opt, src: str) -> None:
        from ggt_ir.archs import ARCHS
        from ggt_ir.losses import LOSSES

        if not opt.network_d:
            raise OptionsError(f"{src}: model_type gan needs a 'network_d' block (e.g. network_d: "
                               "{type: UNetDiscriminatorSN, num_in_ch: 3, num_feat: 64})")
        ARCHS.check(opt.network_d, src, "network_d")
        if getattr(ARCHS.get(opt.network_d["type"]), "model_type", None) is not None:
            raise OptionsError(f"{src}: network_d.type {opt.network_d['type']} is not a discriminator")
        t = opt.train
        if t.gan_opt is None:
            raise OptionsError(f"{src}: model_type gan needs 'train.gan_opt' (e.g. {{type: GANLoss, "
                               "gan_type: vanilla, loss_weight: 0.1}})")
        t.gan_opt = LOSSES.check(t.gan_opt, src, "train.gan_opt")
        if not getattr(LOSSES.get(t.gan_opt.type), "adversarial", False):
            raise OptionsError(f"{src}: train.gan_opt.type must be GANLoss, got {t.gan_opt.type} "
                               "(image losses go in train.pixel_opt / train.losses)")
        if t.degradation is not None:
            try:
                t.degradation.check("train.degradation")
            except ValueError as e:
                raise OptionsError(f"{src}: {e}") from None
            if t.degradation.scale != opt.scale:
                raise OptionsError(f"{src}: train.degradation.scale ({t.degradation.scale}) must equal scale "
                                   f"({opt.scale})")

    def __init__(self, opt, accelerator, log):
        from ggt_ir.archs import build_network
        from ggt_ir.archs.weights import load_weights
        from ggt_ir.losses import build_loss, build_losses
        from ggt_ir.train.optim import LRFactor, build_optimizer

        self.opt, self.acc, t = opt, accelerator, opt.train
        net = self.load_generator(opt, log)
        net_d = build_network(opt.network_d)
        if opt.path.pretrain_network_d:
            log.info(str(load_weights(net_d, opt.path.pretrain_network_d, opt.path.param_key_d,
                                      strict=opt.path.strict_load_d)))
        net_d.train()
        self.num_params = sum(p.numel() for p in net.parameters())
        self.d_params = [p for p in net_d.parameters() if p.requires_grad]  # a frozen backbone stays frozen
        self.num_params_d = sum(p.numel() for p in self.d_params)
        self.losses = ({k: m.to(accelerator.device) for k, m in build_losses(t).items()}
                       if (t.pixel_opt or t.losses) else {})
        self.gan = build_loss(t.gan_opt).to(accelerator.device)
        self.to_memory_format(*self.losses.values())
        optimizer_d = build_optimizer(self.d_params, t.optim_d)
        sched = SimpleNamespace(scheduler=t.scheduler_d or t.scheduler, total_iter=t.total_iter,
                                warmup_iter=t.warmup_iter)
        self.scheduler_d = torch.optim.lr_scheduler.LambdaLR(optimizer_d, LRFactor(sched, t.optim_d.lr))
        self.net_d, self.optimizer_d = self.prepare_generator(net, net_d, optimizer_d)
        accelerator.register_for_checkpointing(self.scheduler_d)
        self.scaler_d = None
        if accelerator.scaler is not None:  # fp16: a loss scale of D's own (see the module docstring)
            self.scaler_d = copy.deepcopy(accelerator.scaler)
            self.optimizer_d.scaler = self.scaler_d
            accelerator.register_for_checkpointing(self.scaler_d)
        self.degradation = None
        if t.degradation is not None:
            from ggt_ir.data.device_degradation import DeviceDegradation

            self.degradation = DeviceDegradation(t.degradation, device=accelerator.device, seed=opt.manual_seed)
            accelerator.register_for_checkpointing(self.degradation)  # the training-pair pool, when on
        self._micro = (0, 0)  # (iteration, micro-batch index) for the degradation seed
        self.updates = {"g": 0, "d": 0}  # optimizer updates made by this process (logged, tested)

    def trained_optimizers(self) -> list:
        return [self.optimizer, self.optimizer_d]

    def describe(self) -> dict:
        t, g = self.opt.train, self.opt.train.gan_opt
        deg = self.opt.train.degradation
        return {"network_g": f"{self.opt.network_g['type']}, {self.num_params / 1e6:.3f} M parameters",
                "network_d": f"{self.opt.network_d['type']}, {self.num_params_d / 1e6:.3f} M trainable parameters",
                "losses": ", ".join([*self.losses, f"l_g_gan ({g.gan_type}{', relativistic' if g.relativistic else ''}"
                                     f", weight {g.loss_weight})"]),
                "D/G schedule": f"G every {t.net_d_iters} iteration(s) after {t.net_d_init_iters} D-only",
                "degradation": (f"on device, Real-ESRGAN second order, synthetic_prob {deg.synthetic_prob}"
                                if deg else "off (pairs from the data loader)"),
                "EMA": f"decay {self.ema.decay}" if self.ema else "off"}

    def _set_d_trainable(self, flag: bool) -> None:
        for p in self.d_params:
            p.requires_grad_(flag)

    @contextlib.contextmanager
    def _d_loss_scale(self):
        """fp16: the discriminator's GradScaler in place of accelerate's while D is updated."""
        if self.scaler_d is None:
            yield
            return
        saved, self.acc.scaler = self.acc.scaler, self.scaler_d
        try:
            yield
        finally:
            self.acc.scaler = saved

    def _prepare_batch(self, batch: dict, it: int) -> dict:
        if self.degradation is None:
            return batch
        micro = self._micro[1] + 1 if self._micro[0] == it else 0
        self._micro = (it, micro)
        if self.degradation.opts.synthetic_prob >= 1:  # every LQ is made here: the loader's (any size) is unused
            batch = {k: v for k, v in batch.items() if k != "lq"}
        return self.degradation(batch, seed=_seed(self.opt.manual_seed, it, micro, self.acc.process_index))

    def train_step(self, batch: dict, it: int) -> dict:
        from ggt_ir.data.device_degradation import usm_sharp

        acc, t = self.acc, self.opt.train
        batch = self._prepare_batch(batch, it)
        lq, gt = batch["lq"], batch["gt"]
        gt_usm = batch.get("gt_usm")
        if gt_usm is None and (t.l1_gt_usm or t.percep_gt_usm or t.gan_gt_usm):
            gt_usm = usm_sharp(gt)
        gt_pix, gt_percep, gt_gan = (gt_usm if flag else gt for flag in (t.l1_gt_usm, t.percep_gt_usm, t.gan_gt_usm))
        d_plain = acc.unwrap_model(self.net_d)  # G's adversarial term: D's ops without DDP's gradient hooks
        update_g = it % t.net_d_iters == 0 and it > t.net_d_init_iters
        losses: dict[str, torch.Tensor] = {}
        with acc.accumulate(self.net_g, self.net_d):
            with torch.set_grad_enabled(update_g):  # a D-only iteration needs no generator graph
                out = self.net_g(lq)
            if update_g:
                self._set_d_trainable(False)
                for name, fn in self.losses.items():
                    losses[name] = fn(out, gt_pix if name == "l_pix" else gt_percep)
                fake_g = d_plain(out)
                real_g = d_plain(gt_gan) if self.gan.relativistic else None
                losses["l_g_gan"] = self.gan.generator_loss(fake_g, real_g)
                if not self.losses_finite(losses, it):
                    self._set_d_trainable(True)
                    return NONFINITE
                self.optimizer_step(sum(losses.values()), self.optimizer, self.scheduler, self.net_g.parameters())
                self.updates["g"] += int(acc.sync_gradients)
            elif acc.sync_gradients:  # the generator's learning rate follows the iteration (BasicSR)
                with warnings.catch_warnings():  # torch warns when a schedule steps before its optimizer
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
            self._set_d_trainable(True)
            # real, then fake, as BasicSR (spectral norm's power iteration once per pass; on CPU one batch of
            # both ran ~20% slower than two)
            real, fake = (_as_list(self.net_d(x)) for x in (gt_gan, out.detach()))
            d_losses = self.gan.discriminator_losses(real, fake)
            if self.gan.gp_weight > 0:
                d_losses["l_d_gp"] = self.gan.penalty(d_plain, gt_gan, out.detach())
            if not self.losses_finite(d_losses, it):
                return NONFINITE
            with self._d_loss_scale():
                self.optimizer_step(sum(d_losses.values()), self.optimizer_d, self.scheduler_d, self.d_params)
            self.updates["d"] += int(acc.sync_gradients)
            losses.update(d_losses)
            losses["out_d_real"] = real[0].detach().float().mean()
            losses["out_d_fake"] = fake[0].detach().float().mean()
        self.update_ema()
        return {k: v.detach() for k, v in losses.items()}

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        with self.inference_network() as net:
            return net(lq).float().clamp(0, 1)

    def export(self, path_stem, it: int) -> list[str]:
        """The generator only, as the regression step writes it (D lives in the checkpoints)."""
        from ggt_ir.train.steps.regression import RegressionStep

        return RegressionStep.export(self, path_stem, it)
