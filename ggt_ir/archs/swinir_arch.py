"""SwinIR: Image Restoration Using Swin Transformer (Liang et al., ICCVW 2021).

Constructor arguments and state-dict keys follow the official release
(github.com/JingyunLiang/SwinIR, ``models/network_swinir.py``), so official checkpoints load
with ``strict=True``. Differences that do not change results:

* window attention runs through ``F.scaled_dot_product_attention`` (fused kernels on GPU) with
  the relative-position bias and the shift mask passed as one additive mask;
* the shift mask for an input size other than ``img_size`` is made once, on the device, and shared by
  all blocks (the official code rebuilds it in every block on every call);
* on CPU with gradients, attention is computed explicitly (SDPA has no fused CPU kernel with a mask
  gradient, and its fallback is slower); otherwise SDPA, with 4-D inputs so fused kernels apply;
* any input size works: the input is reflect-padded to a multiple of ``window_size`` and the
  output cropped back (as the official test script does outside the model);
* ``use_checkpoint=True`` recomputes each Swin block in the backward pass to save memory.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, ws*ws, C)"""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B, nW, ws*ws, C) -> (B, H, W, C)"""
    b, c = windows.shape[0], windows.shape[-1]
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, N, N) additive mask (0 / -100) that keeps shifted windows from mixing regions."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(0).squeeze(-1)  # nW, N
    mask = win[:, None, :] - win[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        ws = window_size[0]
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) * (2 * ws - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, nW, N, C); mask: (nW, N, N) or None."""
        b, nw, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        q, k, v = self.qkv(x).view(b, nw, n, 3, h, d).permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, h, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, h).permute(2, 0, 1)  # h, N, N
        if mask is not None:
            bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)  # nW, h, N, N
        drop = self.attn_drop if self.training else 0.0
        if x.is_cuda or not torch.is_grad_enabled():
            # fused kernels need 4-D inputs and a mask that broadcasts over the batch: windows join the
            # batch (one bias for all) or, for shifted windows, the head dim (one bias per window)
            shape = (b * nw, h, n, d) if mask is None else (b, nw * h, n, d)
            q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
            bias = bias[None] if mask is None else bias.reshape(1, nw * h, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop, scale=self.scale)
            out = out.view(b, nw, h, n, d)
        else:
            # CPU training: SDPA has no fused CPU kernel with a mask gradient and its fallback is slower
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = F.dropout(attn.softmax(dim=-1), drop, self.training)
            out = attn.to(v.dtype) @ v
        out = out.transpose(2, 3).reshape(b, nw, n, c)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim, self.input_resolution, self.num_heads = dim, tuple(input_resolution), num_heads
        self.window_size, self.shift_size = window_size, shift_size
        if min(self.input_resolution) <= self.window_size:  # official rule: no shift in a single window
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, (self.window_size, self.window_size), num_heads, qkv_bias, qk_scale,
                                    attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if self.shift_size > 0:  # kept as a buffer: official checkpoints contain it
            self.register_buffer("attn_mask", shift_mask(*self.input_resolution, self.window_size, self.shift_size))
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: the shift mask for ``x_size`` when it is not ``input_resolution`` (SwinIR makes
        it once per size for all blocks)."""
        h, w = x_size
        b, _, c = x.shape
        if self.shift_size == 0:
            mask = None
        elif (h, w) == self.input_resolution:
            mask = self.attn_mask
        elif mask is None:
            mask = shift_mask(h, w, self.window_size, self.shift_size).to(x.device)
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        x = self.attn(window_partition(x, self.window_size), mask=mask)
        x = window_reverse(x, self.window_size, h, w)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm,
                 use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio, qkv_bias, qk_scale, drop,
                                 attn_drop, drop_path[i] if isinstance(drop_path, list) else drop_path, norm_layer)
            for i in range(depth)
        ])

    def forward(self, x, x_size, mask=None):
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = cp.checkpoint(blk, x, x_size, mask, use_reentrant=False)
            else:
                x = blk(x, x_size, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers + a conv, with a residual connection."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm,
                 use_checkpoint=False, resi_connection="1conv"):
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias,
                                         qk_scale, drop, attn_drop, drop_path, norm_layer, use_checkpoint)
        if resi_connection == "1conv":
            self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        elif resi_connection == "3conv":  # fewer parameters, used by the real-world SR models
            self.conv = nn.Sequential(
                nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(dim // 4, dim, 3, 1, 1))
        else:
            raise ValueError(f"SwinIR: resi_connection must be '1conv' or '3conv', got {resi_connection!r}")

    def forward(self, x, x_size, mask=None):
        h, w = x_size
        b, _, c = x.shape
        y = self.residual_group(x, x_size, mask)
        y = self.conv(y.transpose(1, 2).reshape(b, c, h, w))
        return y.flatten(2).transpose(1, 2) + x


class Upsample(nn.Sequential):
    def __init__(self, scale: int, num_feat: int):
        layers = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"SwinIR: upscale {scale} is not supported; use 2^n or 3")
        super().__init__(*layers)


class PatchNorm(nn.Module):
    """The official ``PatchEmbed`` (patch_size 1): only an optional LayerNorm on tokens."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x):
        return self.norm(x) if self.norm is not None else x


class SwinIR(nn.Module):
    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False,
                 upscale=2, img_range=1.0, upsampler="", resi_connection="1conv"):
        super().__init__()
        if patch_size != 1:
            raise ValueError("SwinIR: only patch_size=1 is used by the official models")
        if upsampler not in ("", "pixelshuffle", "pixelshuffledirect", "nearest+conv"):
            raise ValueError(f"SwinIR: unknown upsampler {upsampler!r}; use '', 'pixelshuffle', "
                             "'pixelshuffledirect' or 'nearest+conv'")
        num_feat = 64
        self.img_range, self.upscale, self.upsampler, self.window_size = img_range, upscale, upsampler, window_size
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchNorm(embed_dim, patch_norm)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, img_size[0] * img_size[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: also under meta
        self.layers = nn.ModuleList([
            RSTB(embed_dim, img_size, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate,
                 attn_drop_rate, dpr[sum(depths[:i]) : sum(depths[: i + 1])], nn.LayerNorm, use_checkpoint,
                 resi_connection)
            for i in range(len(depths))
        ])
        self.norm = nn.LayerNorm(embed_dim)
        if resi_connection == "1conv":
            self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        else:
            self.conv_after_body = nn.Sequential(
                nn.Conv2d(embed_dim, embed_dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim, 3, 1, 1))

        if upsampler == "pixelshuffle":  # classical SR
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":  # lightweight SR
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, in_chans * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale))
        elif upsampler == "nearest+conv":  # real-world SR (x4 only)
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:  # restoration at scale 1 (denoising, JPEG, GGT-100K)
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(self._init_weights)
        self.img_size = img_size
        self._shifted = any(blk.shift_size > 0 for layer in self.layers for blk in layer.residual_group.blocks)
        self._mask_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """One shift mask per input size for all blocks (the stored buffers cover ``img_size``);
        kept on the device: at 1024^2 it is 16384 x 64 x 64."""
        if (h, w) == self.img_size or not self._shifted:
            return None
        key = (h, w, str(device))
        if key not in self._mask_cache:
            if len(self._mask_cache) >= 4:  # sizes seen at inference: keep a few
                self._mask_cache.clear()
            self._mask_cache[key] = shift_mask(h, w, self.window_size, self.window_size // 2).to(device)
        return self._mask_cache[key]

    @property
    def pad_multiple(self) -> int:
        """Input sizes are padded to this multiple inside ``forward`` (used by tiled inference)."""
        return self.window_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = self.patch_embed(x.flatten(2).transpose(1, 2))
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        mask = self._shift_mask(h, w, x.device)
        for layer in self.layers:
            x = layer(x, (h, w), mask)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ws = self.window_size
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        if self.upsampler in ("pixelshuffle", "pixelshuffledirect", "nearest+conv"):
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:
                x = self.conv_before_upsample(x)
                x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
                x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
                x = self.conv_last(self.lrelu(self.conv_hr(x)))
        else:
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        x = x / self.img_range + mean
        s = self.upscale if self.upsampler else 1
        return x[..., : h * s, : w * s]
