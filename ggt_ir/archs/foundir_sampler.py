"""FoundIR's residual diffusion: its schedule, training loss, DDIM-style sampler and ``im2overlap`` tiling.

The forward process (Liu et al.'s residual diffusion, as FoundIR's ``ResidualDiffusion``), in [-1, 1], with the
LQ image ``x_in``, the HQ image ``x_0`` and the residual ``x_res = x_in - x_0``::

    x_t = x_0 + abar_t * x_res + bbar_t * eps - dbar_t * x_in

where ``abar_t = 1 - sqrt(prod(1 - beta))`` (beta linear 1e-4..0.02 over T = 1000), ``bbar_t^2 = 1 - prod(1 -
beta)`` and ``dbar_t`` the cumulative sum of a linear ``delta`` (1e-6..``delta_end``). At ``t = T - 1``,
``x_t ~ (1 - dbar_T) x_in + noise``: sampling starts from the LQ image plus ``sqrt(sum_scale)`` noise.

* :func:`training_loss`: ``|U(cat(x_t, x_in), abar_t T) - x_res|`` averaged, at ``t ~ U{0..T-1}`` per sample
  (the official ``p_losses`` with objective ``pred_res``);
* :func:`ddim_sample`: the official ``ddim_sample`` with ``test_res_or_noise='res'`` and its ``use_pred_noise``
  update ``x <- x - (abar_t - abar_s) r + (dbar_t - dbar_s) x_in + sigma eps`` over ``sampling_timesteps``
  evenly spaced steps, the last one returning the clipped ``x_in - r``;
* :func:`im2overlap`: the official ``img2patch`` / ``patch2img`` of its test (``crop_phase='im2overlap'``):
  ``crop`` x ``crop`` crops every ``crop - overlap`` pixels, the last one flush with the edge, each sampled on its
  own, averaged with equal weights where they overlap. The project's tiler (``tiling.tiled_forward``) has the same
  crop positions but blends with feathered weights; this keeps the official mean so results match FoundIR's.

Randomness comes from ``generator`` (the start noise, and the per-step noise when eta > 0).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

SCHEDULE_BUFFERS = ("alphas", "alphas_cumsum", "delta", "delta_cumsum", "one_minus_alphas_cumsum", "betas2",
                    "betas", "betas2_cumsum", "betas_cumsum", "posterior_mean_coef1", "posterior_mean_coef2",
                    "posterior_mean_coef3", "posterior_variance", "posterior_log_variance_clipped")


def schedule(timesteps: int = 1000, delta_end: float = 1.4e-3) -> dict[str, torch.Tensor]:
    """The 14 buffers of the official ``ResidualDiffusion.__init__`` (the state-dict entries of a checkpoint)."""
    betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float32)
    delta = torch.linspace(1e-6, delta_end, timesteps, dtype=torch.float32)
    delta_cumsum = delta.cumsum(0).clip(0, 1)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    alphas_cumsum = 1 - alphas_cumprod**0.5
    betas2_cumsum = 1 - alphas_cumprod
    alphas_cumsum_prev = F.pad(alphas_cumsum[:-1], (1, 0), value=1.0)
    betas2_cumsum_prev = F.pad(betas2_cumsum[:-1], (1, 0), value=1.0)
    alphas = alphas_cumsum - alphas_cumsum_prev
    alphas[0] = 0
    betas2 = betas2_cumsum - betas2_cumsum_prev
    betas2[0] = 0
    posterior_variance = betas2 * betas2_cumsum_prev / betas2_cumsum
    posterior_variance[0] = 0
    out = {
        "alphas": alphas, "alphas_cumsum": alphas_cumsum, "delta": delta, "delta_cumsum": delta_cumsum,
        "one_minus_alphas_cumsum": 1 - alphas_cumsum, "betas2": betas2, "betas": torch.sqrt(betas2),
        "betas2_cumsum": betas2_cumsum, "betas_cumsum": torch.sqrt(betas2_cumsum),
        "posterior_mean_coef1": betas2_cumsum_prev / betas2_cumsum,
        "posterior_mean_coef2": (betas2 * alphas_cumsum_prev - betas2_cumsum_prev * alphas) / betas2_cumsum,
        "posterior_mean_coef3": betas2 / betas2_cumsum,
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
    }
    out["posterior_mean_coef1"][0] = 0
    out["posterior_mean_coef2"][0] = 0
    out["posterior_mean_coef3"][0] = 1
    out["one_minus_alphas_cumsum"][-1] = 1e-6
    return {k: out[k].float() for k in SCHEDULE_BUFFERS}


def _per_sample(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return v[t].view(-1, 1, 1, 1)


def training_loss(net, lq: torch.Tensor, gt: torch.Tensor, t: Optional[torch.Tensor] = None,
                  noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The official ``p_losses`` (objective ``pred_res``, L1): a scalar. ``t`` and ``noise`` default to draws from
    ``generator`` (uniform timesteps, standard normal noise)."""
    x_in, x_0 = 2 * lq - 1, 2 * gt - 1
    x_res = x_in - x_0
    b = x_0.shape[0]
    dev = x_0.device
    if t is None:
        t = torch.randint(0, net.num_timesteps, (b,), generator=generator,
                          device=generator.device if generator is not None else "cpu").to(dev)
    if noise is None:
        noise = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype,
                            device=generator.device if generator is not None else "cpu").to(dev)
    x_t = (x_0 + _per_sample(net.alphas_cumsum, t) * x_res + _per_sample(net.betas_cumsum, t) * noise
           - _per_sample(net.delta_cumsum, t) * x_in)
    pred_res = net.predict_residual(x_t, x_in, t)
    return F.l1_loss(pred_res.float(), x_res.float())


def sampling_times(timesteps: int, steps: int) -> list[tuple[int, int]]:
    """(t, t_next) pairs of the official ``ddim_sample``: ``linspace(-1, T - 1, steps + 1)``, truncated, reversed."""
    times = list(reversed(torch.linspace(-1, timesteps - 1, steps=steps + 1).int().tolist()))
    return list(zip(times[:-1], times[1:]))


@torch.no_grad()
def ddim_sample(net, lq: torch.Tensor, steps: int, eta: float = 0.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """LQ in [0, 1] -> the restored image in [0, 1] (the official ``sample`` -> ``ddim_sample``)."""
    x_in = 2 * lq - 1
    dev = x_in.device
    gen_dev = generator.device if generator is not None else "cpu"
    noise = torch.randn(x_in.shape, generator=generator, dtype=x_in.dtype, device=gen_dev).to(dev)
    img = (1 - net.delta_cumsum[-1]) * x_in + (net.sum_scale**0.5) * noise
    b = x_in.shape[0]
    for time, time_next in sampling_times(net.num_timesteps, steps):
        t = torch.full((b,), time, device=dev, dtype=torch.long)
        pred_res = net.predict_residual(img, x_in, t).clamp(-1, 1)
        if time_next < 0:
            img = (x_in - pred_res).clamp(-1, 1)
            continue
        alpha = net.alphas_cumsum[time] - net.alphas_cumsum[time_next]
        delta = net.delta_cumsum[time] - net.delta_cumsum[time_next]
        img = img - alpha * pred_res + delta * x_in
        if eta > 0:
            betas2 = net.betas2_cumsum[time] - net.betas2_cumsum[time_next]
            sigma2 = eta * (betas2 * net.betas2_cumsum[time_next] / net.betas2_cumsum[time])
            step_noise = torch.randn(img.shape, generator=generator, dtype=img.dtype, device=gen_dev).to(dev)
            img = img + sigma2.sqrt() * step_noise
    return (img + 1) * 0.5


def overlap_starts(size: int, crop: int, overlap: int) -> list[int]:
    """Crop origins along one side: every ``crop - overlap`` pixels, the last flush with the edge (official
    ``img2patch``; a side shorter than the crop gets one crop of its own length)."""
    if size <= crop:
        return [0]
    step = crop - overlap
    return list(range(0, size - crop, step)) + [size - crop]


def im2overlap(fn: Callable[[torch.Tensor], torch.Tensor], lq: torch.Tensor, crop: int, overlap: int,
               batch: int = 1) -> torch.Tensor:
    """``fn`` on overlapping crops of ``lq`` (B, C, H, W), merged by the mean of the crops covering each pixel.
    ``batch`` crops go through ``fn`` at once (the official test runs one at a time)."""
    b, c, h, w = lq.shape
    ch, cw = min(crop, h), min(crop, w)
    boxes = [(i, j) for i in overlap_starts(h, ch, overlap) for j in overlap_starts(w, cw, overlap)]
    out = torch.zeros(b, c, h, w, device=lq.device, dtype=torch.float32)
    count = torch.zeros(1, 1, h, w, device=lq.device, dtype=torch.float32)
    for k in range(0, len(boxes), batch):
        group = boxes[k:k + batch]
        crops = torch.cat([lq[..., i:i + ch, j:j + cw] for i, j in group])
        res = fn(crops).float()
        for n, (i, j) in enumerate(group):
            out[..., i:i + ch, j:j + cw] += res[n * b:(n + 1) * b]
            count[..., i:i + ch, j:j + cw] += 1
    return out / count.clamp(min=1)
