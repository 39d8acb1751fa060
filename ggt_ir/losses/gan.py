"""Adversarial losses, with one API for the two sides of a GAN step.

::

    gan = GANLoss(gan_type="vanilla", loss_weight=0.1)            # train.gan_opt
    # generator update (D frozen): weighted by loss_weight
    l_g_gan = gan.generator_loss(net_d(out))                       # relativistic: (net_d(out), net_d(gt))
    # discriminator update: weight 1, as BasicSR; the fake is detached by the caller
    d = gan.discriminator_losses(net_d(gt), net_d(out.detach()))   # {"l_d_real": ..., "l_d_fake": ...}
    l_d = d["l_d_real"] + d["l_d_fake"] + gan.penalty(net_d, gt, out.detach())   # WGAN-GP term, 0 unless gp_weight

``gan_type`` (BasicSR's ``GANLoss`` names, same formulas):

* ``vanilla``: binary cross-entropy on logits (labels ``real_label_val`` / ``fake_label_val``);
* ``lsgan``: mean squared error to the labels (Mao et al., 2017);
* ``hinge``: D ``relu(1 - real) + relu(1 + fake)``, G ``-fake`` (Lim & Ye, 2017);
* ``wgan``: D ``-real + fake``, G ``-fake`` (Arjovsky et al., 2017); with ``gp_weight: 10`` it is WGAN-GP
  (Gulrajani et al., 2017), the penalty from :func:`gradient_penalty`;
* ``wgan_softplus``: D ``softplus(-real) + softplus(fake)``, G ``softplus(-fake)`` (StyleGAN2's logistic loss).

``relativistic: true`` is the relativistic average GAN of ESRGAN (Wang et al., 2018), on top of ``vanilla`` or
``lsgan``: the discriminator judges ``C(real) - mean C(fake)`` against ``C(fake) - mean C(real)``; the generator
loss then needs the real predictions too. The detaching follows BasicSR's ``ESRGANModel`` exactly: in each term
only the prediction being judged carries gradient, the mean of the other side is a constant.

Predictions may be one tensor or a list of tensors (multi-scale or multi-level discriminators): each loss is the
mean of the per-prediction losses. Losses are computed in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

GAN_TYPES = ("vanilla", "lsgan", "hinge", "wgan", "wgan_softplus")
Preds = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_list(pred: Preds) -> list[torch.Tensor]:
    return [pred] if isinstance(pred, torch.Tensor) else list(pred)


class GANLoss(nn.Module):
    short_name = "gan"
    adversarial = True  # compares discriminator outputs: not a member of train.losses

    @dataclass
    class Options:
        type: str = "GANLoss"
        gan_type: str = "vanilla"  # vanilla | lsgan | hinge | wgan | wgan_softplus
        relativistic: bool = False  # relativistic average (ESRGAN), with vanilla or lsgan
        real_label_val: float = 1.0
        fake_label_val: float = 0.0
        loss_weight: float = 1.0  # generator side only; the discriminator's loss has weight 1 (BasicSR)
        gp_weight: float = 0.0  # WGAN-GP gradient penalty on the discriminator (10 in the paper)

    def __init__(self, gan_type: str = "vanilla", relativistic: bool = False, real_label_val: float = 1.0,
                 fake_label_val: float = 0.0, loss_weight: float = 1.0, gp_weight: float = 0.0):
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"GANLoss: gan_type {gan_type!r} is unknown; use one of {', '.join(GAN_TYPES)}")
        if relativistic and gan_type not in ("vanilla", "lsgan"):
            raise ValueError(f"GANLoss: relativistic: true needs gan_type vanilla or lsgan, not {gan_type!r}")
        if gp_weight < 0:
            raise ValueError(f"GANLoss: gp_weight must be >= 0, got {gp_weight}")
        self.gan_type, self.relativistic = gan_type, relativistic
        self.real_label_val, self.fake_label_val = real_label_val, fake_label_val
        self.loss_weight, self.gp_weight = loss_weight, gp_weight

    # ------------------------------------------------------------------ one prediction, one target
    def criterion(self, pred: torch.Tensor, target_is_real: bool, is_disc: bool) -> torch.Tensor:
        """The unweighted loss of one prediction tensor (BasicSR's ``GANLoss.forward`` without the weight)."""
        x = pred.float()
        if self.gan_type in ("vanilla", "lsgan"):
            label = torch.full_like(x, self.real_label_val if target_is_real else self.fake_label_val)
            if self.gan_type == "vanilla":
                return F.binary_cross_entropy_with_logits(x, label)
            return F.mse_loss(x, label)
        if self.gan_type == "wgan":
            return -x.mean() if target_is_real else x.mean()
        if self.gan_type == "wgan_softplus":
            return F.softplus(-x).mean() if target_is_real else F.softplus(x).mean()
        # hinge
        if is_disc:
            return F.relu(1 - x).mean() if target_is_real else F.relu(1 + x).mean()
        return -x.mean()

    def forward(self, pred: Preds, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:
        """BasicSR's call: the loss of ``pred`` against a real/fake target; ``loss_weight`` applies when not
        ``is_disc``. Prefer :meth:`generator_loss` / :meth:`discriminator_losses` (they also do relativistic)."""
        preds = _as_list(pred)
        loss = sum(self.criterion(p, target_is_real, is_disc) for p in preds) / len(preds)
        return loss if is_disc else loss * self.loss_weight

    # ------------------------------------------------------------------ the two sides of a GAN step
    def generator_loss(self, fake_pred: Preds, real_pred: Preds | None = None) -> torch.Tensor:
        """The generator's adversarial loss (weighted). ``fake_pred = net_d(output)`` with gradient to the
        generator; ``real_pred = net_d(gt)`` is needed (and detached here) when relativistic."""
        if not self.relativistic:
            return self(fake_pred, True, is_disc=False)
        if real_pred is None:
            raise ValueError("GANLoss(relativistic=True).generator_loss needs real_pred = net_d(gt) as well")
        fakes, reals = _as_list(fake_pred), _as_list(real_pred)
        total = 0
        for fake, real in zip(fakes, reals, strict=True):
            real = real.detach()
            total = total + (self.criterion(real - fake.mean(), False, False)
                             + self.criterion(fake - real.mean(), True, False)) / 2
        return self.loss_weight * total / len(fakes)

    def discriminator_losses(self, real_pred: Preds, fake_pred: Preds) -> dict[str, torch.Tensor]:
        """``{"l_d_real", "l_d_fake"}`` (weight 1; their sum is the discriminator's loss). ``fake_pred`` is
        ``net_d(output.detach())``."""
        reals, fakes = _as_list(real_pred), _as_list(fake_pred)
        if not self.relativistic:
            return {"l_d_real": self(reals, True, is_disc=True), "l_d_fake": self(fakes, False, is_disc=True)}
        l_real = l_fake = 0
        for real, fake in zip(reals, fakes, strict=True):
            l_real = l_real + self.criterion(real - fake.detach().mean(), True, True) * 0.5
            l_fake = l_fake + self.criterion(fake - real.detach().mean(), False, True) * 0.5
        return {"l_d_real": l_real / len(reals), "l_d_fake": l_fake / len(reals)}

    def penalty(self, net_d: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``gp_weight * gradient_penalty(...)`` (a zero tensor when ``gp_weight`` is 0)."""
        if self.gp_weight == 0:
            return real.new_zeros(())
        return self.gp_weight * gradient_penalty(net_d, real, fake, generator=generator)


def gradient_penalty(net_d: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017, eq. 3): ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` at
    ``x_hat = alpha * real + (1 - alpha) * fake``, ``alpha ~ U[0, 1]`` per sample (drawn from ``generator``
    unless given), the norm taken over all of a sample's pixels and channels as in the paper (BasicSR's
    ``gradient_penalty_loss`` takes it over channels only, per pixel). A discriminator with several outputs
    contributes the gradient of the sum of all of them. Differentiable w.r.t. D's parameters."""
    b = real.shape[0]
    if alpha is None:
        alpha = torch.rand(b, 1, 1, 1, generator=generator, device=generator.device if generator else "cpu")
    alpha = alpha.to(real.device, real.dtype).view(b, 1, 1, 1)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = sum(p.float().sum() for p in _as_list(net_d(x_hat)))
    (grad,) = torch.autograd.grad(out, x_hat, create_graph=True)
    return ((grad.float().flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(real_pred: Preds, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., 2018, eq. 9; BasicSR's ``r1_penalty``): ``E[||grad_x D(x)||^2]`` on real data;
    ``real`` must have ``requires_grad`` set before ``real_pred = net_d(real)``. Weight it with ``gamma / 2``."""
    out = sum(p.float().sum() for p in _as_list(real_pred))
    (grad,) = torch.autograd.grad(out, real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()
