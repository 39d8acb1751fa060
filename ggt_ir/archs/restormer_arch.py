"""Restormer: Efficient Transformer for High-Resolution Image Restoration (Zamir et al., CVPR 2022).

Constructor arguments and state-dict keys follow the official release
(github.com/swz30/Restormer, ``basicsr/models/archs/restormer_arch.py``), so the released
checkpoints (``{'params': ...}``) load with ``strict=True``. Differences that do not change
results (fp32 outputs agree with the reference to ~1e-6):

* the network runs in channels-last memory format, where the channel LayerNorm is one fused
  ``F.layer_norm`` over the last dimension (the reference transposes to tokens and back, with
  five elementwise passes), 1x1 convolutions are plain matmuls over pixels (``Conv1x1``, same
  parameters) and the depthwise convolutions take the channels-last oneDNN/cuDNN kernels;
* the transposed (channel) attention never materialises L2-normalised q and k: it computes
  ``q @ k^T`` once and divides the small ``c x c`` logits by the outer product of the norms.
  Fused SDPA kernels do not apply here: the "sequence" is the channels and the "head dim" is H*W,
  far above every fused kernel's limit, so SDPA would fall back to the same matmuls (measured:
  slower on CPU, ``bench/model_speed.py --mdta``, bench/RESULTS.md);
* any input size works: the input is reflect-padded to a multiple of 8 (as the official test
  script does outside the model) and the output cropped back;
* ``use_checkpoint=True`` recomputes each transformer block in the backward pass (saves memory;
  no change to state-dict keys).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from ggt_ir.archs.common import CL, Conv1x1, channel_layer_norm, pad_to_multiple


class _Affine(nn.Module):
    """Holds the LayerNorm parameters under the official ``norm.body.weight/bias`` keys."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None


class LayerNorm(nn.Module):
    """LayerNorm over channels of a (B, C, H, W) tensor. ``BiasFree`` divides by the standard
    deviation without centring the numerator (the official definition)."""

    def __init__(self, dim: int, LayerNorm_type: str):
        super().__init__()
        if LayerNorm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {LayerNorm_type!r}")
        self.bias_free = LayerNorm_type == "BiasFree"
        self.body = _Affine(dim, bias=not self.bias_free)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.body.weight
        if self.bias_free:
            # statistics in fp32 so bf16 autocast stays stable
            var = x.float().var(1, keepdim=True, unbiased=False)
            return (x / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1)).to(x.dtype)
        return channel_layer_norm(x, w, self.body.bias, 1e-5)


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN)."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = Conv1x1(dim, hidden * 2, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=bias)
        self.project_out = Conv1x1(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """softmax(normalize(q) @ normalize(k)^T * t) @ v over (B, heads, c, N) tensors, without
    writing the normalised q and k (N = H*W is large, c is small)."""
    logits = (q @ k.transpose(-2, -1)).float()
    qn = torch.linalg.vector_norm(q.float(), dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
    kn = torch.linalg.vector_norm(k.float(), dim=-1, keepdim=True).clamp_min(1e-12)
    attn = (logits / (qn * kn.transpose(-2, -1)) * temperature).softmax(dim=-1)
    return attn.to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): attention across channels."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = Conv1x1(dim, dim * 3, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=bias)
        self.project_out = Conv1x1(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv_dwconv(self.qkv(x))
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = channel_attention(q, k, v, self.temperature).reshape(b, c, h, w)
        return self.project_out(out.contiguous(memory_format=CL))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, LayerNorm_type: str):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Blocks(nn.Sequential):
    """A stage of transformer blocks; ``use_checkpoint`` recomputes each block in backward."""

    def __init__(self, n: int, *args, use_checkpoint: bool = False):
        super().__init__(*[TransformerBlock(*args) for _ in range(n)])
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, 1, 1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x).contiguous(memory_format=CL)  # pixel (un)shuffle returns NCHW


class Upsample(nn.Module):
    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x).contiguous(memory_format=CL)


class Restormer(nn.Module):
    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
                 dual_pixel_task=False, use_checkpoint=False):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError("Restormer: num_blocks and heads need 4 entries (3 encoder levels + latent)")
        blocks = lambda n, d, h: Blocks(n, d, h, ffn_expansion_factor, bias, LayerNorm_type,  # noqa: E731
                                        use_checkpoint=use_checkpoint)
        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = blocks(num_blocks[0], d1, heads[0])
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = blocks(num_blocks[1], d2, heads[1])
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = blocks(num_blocks[2], d3, heads[2])
        self.down3_4 = Downsample(d3)
        self.latent = blocks(num_blocks[3], d4, heads[3])
        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = Conv1x1(d4, d3, bias=bias)
        self.decoder_level3 = blocks(num_blocks[2], d3, heads[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = Conv1x1(d3, d2, bias=bias)
        self.decoder_level2 = blocks(num_blocks[1], d2, heads[1])
        self.up2_1 = Upsample(d2)  # level 1 keeps 2*dim channels: no 1x1 reduction (official)
        self.decoder_level1 = blocks(num_blocks[0], d2, heads[0])
        self.refinement = blocks(num_refinement_blocks, d2, heads[0])
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:  # dual-pixel defocus deblurring (inp_channels=6): no global residual
            self.skip_conv = Conv1x1(dim, d2, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, 3, 1, 1, bias=bias)

    pad_multiple = 8  # three 2x downsamplings

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        h, w = inp_img.shape[-2:]
        inp = pad_to_multiple(inp_img, self.pad_multiple).contiguous(memory_format=CL)
        x1 = self.patch_embed(inp)
        e1 = self.encoder_level1(x1)
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        lat = self.latent(self.down3_4(e3))
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1)))
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1)))
        d1 = self.refinement(self.decoder_level1(torch.cat([self.up2_1(d2), e1], 1)))
        if self.dual_pixel_task:
            out = self.output(d1 + self.skip_conv(x1))
        else:
            out = self.output(d1) + inp
        return out[..., :h, :w].contiguous()
