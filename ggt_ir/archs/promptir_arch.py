"""PromptIR: Prompting for All-in-One Blind Image Restoration (Potlapalli et al., NeurIPS 2023).

A Restormer backbone (blocks from ``restormer_arch.py``) whose decoder, at each of its three
levels, concatenates a "prompt": a softmax-weighted mix of ``prompt_len`` learned maps, weighted
from the features' global average, resized to the feature size, then fused by one extra
transformer block and a 1x1 reduction.

Constructor arguments and state-dict keys follow the official release
(github.com/va1shn9v/PromptIR, ``net/model.py``); its checkpoint is a Lightning ``.ckpt`` with
``state_dict: {net.<key>: ...}``, which ``load_weights`` reads as is. The official model
hard-codes the prompt sizes for ``dim=48``; here they are arguments (``prompt_dims``,
``prompt_sizes``, ``prompt_len``) whose defaults are the official values, so small test models
can be built. The official ``__init__`` also creates six 1x1 convolutions its ``forward`` never uses
(``chnl_reduce1-3``, ``reduce_noise_channel_1-3``); they are kept, frozen (``requires_grad=False``,
so DDP needs no ``find_unused_parameters``), so that the released checkpoint loads strictly.
``decoder=False`` (no prompts) is the plain Restormer path here; the official code cannot run it.
No PyPI package implements PromptIR; the tests check the official key layout and parameter count.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.archs.common import CL, Conv1x1, pad_to_multiple
from ggt_ir.archs.restormer_arch import Blocks, Downsample, OverlapPatchEmbed, TransformerBlock, Upsample


class PromptGenBlock(nn.Module):
    def __init__(self, prompt_dim: int = 128, prompt_len: int = 5, prompt_size: int = 96, lin_dim: int = 192):
        super().__init__()
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # B, prompt_len
        prompt = torch.einsum("bl,lchw->bchw", weights, self.prompt_param[0].to(weights.dtype))
        prompt = F.interpolate(prompt, x.shape[-2:], mode="bilinear")
        return self.conv3x3(prompt.contiguous(memory_format=CL))


class PromptIR(nn.Module):
    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
                 decoder=False, prompt_dims: Sequence[int] = (64, 128, 320), prompt_sizes: Sequence[int] = (64, 32, 16),
                 prompt_len: int = 5, use_checkpoint=False):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4 or len(prompt_dims) != 3 or len(prompt_sizes) != 3:
            raise ValueError("PromptIR: num_blocks and heads need 4 entries, prompt_dims and prompt_sizes 3")
        blocks = lambda n, d, h: Blocks(n, d, h, ffn_expansion_factor, bias, LayerNorm_type,  # noqa: E731
                                        use_checkpoint=use_checkpoint)
        block = lambda d: TransformerBlock(d, heads[2], ffn_expansion_factor, bias, LayerNorm_type)  # noqa: E731
        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        p1, p2, p3 = prompt_dims
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.decoder = decoder
        if decoder:  # lin_dim = channels of the features each prompt reads
            self.prompt1 = PromptGenBlock(p1, prompt_len, prompt_sizes[0], d2)
            self.prompt2 = PromptGenBlock(p2, prompt_len, prompt_sizes[1], d3)
            self.prompt3 = PromptGenBlock(p3, prompt_len, prompt_sizes[2], d4)
        # unused by the official forward (see module docstring); official shapes for dim=48
        self.chnl_reduce1 = Conv1x1(p1, p1, bias=bias)
        self.chnl_reduce2 = Conv1x1(p2, p2, bias=bias)
        self.chnl_reduce3 = Conv1x1(p3, 2 * p2, bias=bias)
        self.reduce_noise_channel_1 = Conv1x1(d1 + p1, d1, bias=bias)
        self.reduce_noise_channel_2 = Conv1x1(d2 + p2, d2, bias=bias)
        self.reduce_noise_channel_3 = Conv1x1(d3 + 2 * p2, d3, bias=bias)
        for name in ("chnl_reduce1", "chnl_reduce2", "chnl_reduce3",
                     "reduce_noise_channel_1", "reduce_noise_channel_2", "reduce_noise_channel_3"):
            getattr(self, name).requires_grad_(False)

        self.encoder_level1 = blocks(num_blocks[0], d1, heads[0])
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = blocks(num_blocks[1], d2, heads[1])
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = blocks(num_blocks[2], d3, heads[2])
        self.down3_4 = Downsample(d3)
        self.latent = blocks(num_blocks[3], d4, heads[3])
        # with the prompt, the latent is reduced to d3 before upsampling (official: Upsample(dim*4))
        self.up4_3 = Upsample(d3 if decoder else d4)
        self.reduce_chan_level3 = Conv1x1(d2 + d3 if decoder else d4, d3, bias=bias)
        if decoder:  # the extra block runs on 4 heads at every level (official)
            self.noise_level3 = block(d4 + p3)
            self.reduce_noise_level3 = Conv1x1(d4 + p3, d3, bias=bias)
        self.decoder_level3 = blocks(num_blocks[2], d3, heads[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = Conv1x1(d3, d2, bias=bias)
        if decoder:
            self.noise_level2 = block(d3 + p2)
            self.reduce_noise_level2 = Conv1x1(d3 + p2, d3, bias=bias)
        self.decoder_level2 = blocks(num_blocks[1], d2, heads[1])
        self.up2_1 = Upsample(d2)
        if decoder:
            self.noise_level1 = block(d2 + p1)
            self.reduce_noise_level1 = Conv1x1(d2 + p1, d2, bias=bias)
        self.decoder_level1 = blocks(num_blocks[0], d2, heads[0])
        self.refinement = blocks(num_refinement_blocks, d2, heads[0])
        self.output = nn.Conv2d(d2, out_channels, 3, 1, 1, bias=bias)

    pad_multiple = 8  # three 2x downsamplings

    def _prompt(self, x: torch.Tensor, level: int) -> torch.Tensor:
        if not self.decoder:
            return x
        x = torch.cat([x, getattr(self, f"prompt{level}")(x)], 1)
        return getattr(self, f"reduce_noise_level{level}")(getattr(self, f"noise_level{level}")(x))

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        h, w = inp_img.shape[-2:]
        inp = pad_to_multiple(inp_img, self.pad_multiple).contiguous(memory_format=CL)
        e1 = self.encoder_level1(self.patch_embed(inp))
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        lat = self._prompt(self.latent(self.down3_4(e3)), 3)
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1)))
        d3 = self._prompt(d3, 2)
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1)))
        d2 = self._prompt(d2, 1)
        d1 = self.refinement(self.decoder_level1(torch.cat([self.up2_1(d2), e1], 1)))
        return (self.output(d1) + inp)[..., :h, :w].contiguous()
