"""FoundIR's generalist model (Li, Chen, Dong, Tang & Pan, "FoundIR: Unleashing Million-scale Training Data to
Advance Foundation Models for Image Restoration", ICCV 2025; code github.com/House-Leo/FoundIR, ``src/model.py``).

FoundIR restores by **residual diffusion**: a conditional U-Net (the DDPM U-Net of lucidrains'
``denoising-diffusion-pytorch``, with weight-standardised convolutions, GroupNorm, linear attention at every level
and full attention in the middle) sees the current state concatenated with the LQ image and predicts the
*residual* LQ - HQ; a 4-step deterministic DDIM-style sampler (``foundir_sampler.py``) walks from a noised LQ to
the HQ estimate. Its inference is therefore not ``net(lq)`` alone:

* ``restore(lq, generator=None, ...)`` / ``net(lq)`` in eval: the official test (4 steps, eta 0, images larger
  than ``crop_size``^2 pixels cut into overlapping ``crop_size`` crops, ``im2overlap``);
* ``net(lq, gt)``: the official training loss (L1 between the predicted and the true residual at a random
  timestep), so a step calls it through DDP like any forward.

Module names and buffers follow the official ``ResidualDiffusion(UnetRes(Unet))``: the state dict is
``model.unet0.<U-Net>`` plus the 14 schedule buffers, exactly the official ``'model'`` entry, and the released
``model-2000.pt`` (``{'model', 'ema', ...}``; its ``ema`` holds ``ema_model.<same keys>``) loads with
``strict=True`` (``load_weights`` takes the EMA weights, as the official test). Official configuration: dim 64,
dim_mults (1, 2, 4, 8), condition on (6 input channels), objective ``pred_res``, 1000 timesteps,
``delta_end`` 1.4e-3, ``sum_scale`` 0.01, 4 sampling steps for real-world inputs (3 for synthetic ones).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.archs import foundir_sampler as sampler


# ------------------------------------------------------------------------------------------ building blocks
class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel (Qiao et al., 2019) at every call."""

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return F.conv2d(x, (w - mean) * (var + eps).rsqrt(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class LayerNorm(nn.Module):
    """Channel LayerNorm without bias (parameter ``g``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn, self.norm = fn, LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        emb = t[:, None] * freq[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """Two Blocks; the timestep embedding scales and shifts the first one's normalised features."""

    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int, groups: int = 8):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, t_emb):
        scale_shift = self.mlp(t_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Efficient attention (Shen et al.): softmax over features for q, over positions for k; O(HW)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), LayerNorm(dim))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full softmax attention over positions (the bottleneck only)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2) for t in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, the official einsum
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


def _upsample(dim: int, dim_out: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


# ------------------------------------------------------------------------------------------ the U-Net
class Unet(nn.Module):
    """The conditional U-Net: input = cat(state, LQ) (2 x ``channels``), output = the predicted residual."""

    def __init__(self, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4, 8), channels: int = 3,
                 resnet_block_groups: int = 8, condition: bool = True):
        super().__init__()
        self.channels, self.depth = channels, len(dim_mults)
        self.init_conv = nn.Conv2d(channels * (2 if condition else 1), dim, 7, padding=3)
        dims = [dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        time_dim = dim * 4
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))
        res = lambda i, o: ResnetBlock(i, o, time_emb_dim=time_dim, groups=resnet_block_groups)  # noqa: E731
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()  # both registered here: the official key order
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(nn.ModuleList([
                res(d_in, d_in), res(d_in, d_in), Residual(PreNorm(d_in, LinearAttention(d_in))),
                nn.Conv2d(d_in, d_out, 3, padding=1) if last else nn.Conv2d(d_in, d_out, 4, 2, 1)]))
        mid = dims[-1]
        self.mid_block1 = res(mid, mid)
        self.mid_attn = Residual(PreNorm(mid, Attention(mid)))
        self.mid_block2 = res(mid, mid)
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            self.ups.append(nn.ModuleList([
                res(d_out + d_in, d_out), res(d_out + d_in, d_out), Residual(PreNorm(d_out, LinearAttention(d_out))),
                nn.Conv2d(d_out, d_in, 3, padding=1) if last else _upsample(d_out, d_in)]))
        self.final_res_block = res(dim * 2, dim)
        self.final_conv = nn.Conv2d(dim, channels, 1)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        s = 2**self.depth  # the official check_image_size: reflect-pad to a multiple of 2^depth
        x = F.pad(x, (0, (-w_in) % s, 0, (-h_in) % s), mode="reflect")
        x = self.init_conv(x)
        r = x.clone()
        t = self.time_mlp(time)
        skips = []
        for block1, block2, attn, down in self.downs:
            x = block1(x, t)
            skips.append(x)
            x = attn(block2(x, t))
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, t)), t)
        for block1, block2, attn, up in self.ups:
            x = block1(torch.cat((x, skips.pop()), dim=1), t)
            x = attn(block2(torch.cat((x, skips.pop()), dim=1), t))
            x = up(x)
        x = self.final_res_block(torch.cat((x, r), dim=1), t)
        return self.final_conv(x)[..., :h_in, :w_in].contiguous()


class UnetRes(nn.Module):
    """The official wrapper (one U-Net, ``unet0``) fed the residual branch's time ``alphas_cumsum[t] * T``."""

    def __init__(self, **unet_kwargs):
        super().__init__()
        self.unet0 = Unet(**unet_kwargs)

    def forward(self, x, time):
        return self.unet0(x, time)


# ------------------------------------------------------------------------------------------ FoundIR
class FoundIR(nn.Module):
    model_type = "foundir"  # the trainer step that trains it (ggt_ir/train/steps/foundir.py)
    scale = 1

    def __init__(self, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4, 8), channels: int = 3,
                 resnet_block_groups: int = 8, timesteps: int = 1000, delta_end: float = 1.4e-3,
                 sum_scale: float = 0.01, sampling_timesteps: int = 4, ddim_sampling_eta: float = 0.0,
                 crop_size: int = 1024, crop_overlap: int = 512, tile_batch: int = 1):
        super().__init__()
        if not 1 <= sampling_timesteps <= timesteps:
            raise ValueError(f"FoundIR: sampling_timesteps must be in [1, {timesteps}], got {sampling_timesteps}")
        if crop_size and not 0 <= crop_overlap < crop_size:
            raise ValueError(f"FoundIR: crop_overlap ({crop_overlap}) must be in [0, crop_size={crop_size})")
        self.model = UnetRes(dim=dim, dim_mults=tuple(dim_mults), channels=channels,
                             resnet_block_groups=resnet_block_groups, condition=True)
        for name, value in sampler.schedule(timesteps, delta_end).items():
            self.register_buffer(name, value)
        self.num_timesteps, self.sum_scale = timesteps, sum_scale
        self.sampling_timesteps, self.ddim_sampling_eta = sampling_timesteps, ddim_sampling_eta
        self.crop_size, self.crop_overlap, self.tile_batch = crop_size, crop_overlap, tile_batch
        self.pad_multiple = 2 ** len(dim_mults)  # padded inside (reflect), as the official U-Net

    def predict_residual(self, x_t: torch.Tensor, x_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The U-Net on cat(state, LQ) in [-1, 1] at integer timesteps ``t`` (B,)."""
        return self.model(torch.cat((x_t, x_input), dim=1), self.alphas_cumsum[t] * self.num_timesteps)

    def forward(self, lq: torch.Tensor, gt: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """``net(lq, gt)``: the training loss; ``net(lq)``: the restored image (eval mode)."""
        if gt is not None:
            return sampler.training_loss(self, lq, gt, **kwargs)
        if self.training:
            raise RuntimeError("FoundIR trains with its diffusion loss: call net(lq, gt) (a step for "
                               "network_g FoundIR), not net(lq); for inference use net.eval() or net.restore(lq)")
        return self.restore(lq, **kwargs)

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, generator: Optional[torch.Generator] = None,
                sampling_timesteps: Optional[int] = None, crop_size: Optional[int] = None,
                crop_overlap: Optional[int] = None) -> torch.Tensor:
        """The official test: LQ (B, 3, H, W) in [0, 1] -> restored image in [0, 1]. Images larger than
        ``crop_size``^2 pixels are restored in overlapping crops (``im2overlap``), averaged where they overlap."""
        steps = sampling_timesteps or self.sampling_timesteps
        crop = self.crop_size if crop_size is None else crop_size
        overlap = self.crop_overlap if crop_overlap is None else crop_overlap

        def run(x):
            return sampler.ddim_sample(self, x, steps, self.ddim_sampling_eta, generator)

        if crop and lq.shape[-2] * lq.shape[-1] > crop * crop:
            return sampler.im2overlap(run, lq, crop, overlap, self.tile_batch)
        return run(lq)
