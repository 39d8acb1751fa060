"""Frequency-domain losses: they weigh the high frequencies (texture, fine detail) that pixel losses blur away.

* :class:`FocalFrequencyLoss`: Jiang et al., "Focal Frequency Loss for Image Reconstruction and Synthesis",
  ICCV 2021 (official code: github.com/EndlessSora/focal-frequency-loss, PyPI ``focal-frequency-loss``; same
  options and values, tested against it). The squared distance of the 2-D orthonormal DFTs, weighted by the
  (detached) distance itself to the power ``alpha``, normalised to [0, 1]: hard frequencies get the weight.
* :class:`FFTLoss`: L1 (or L2) between the real and imaginary parts of the orthonormal real FFTs, the
  "FFT loss" of DeepRFT / MPRNet-style and traiNNer/neosr recipes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class FocalFrequencyLoss(nn.Module):
    short_name = "ffl"

    @dataclass
    class Options:
        type: str = "FocalFrequencyLoss"
        loss_weight: float = 1.0
        alpha: float = 1.0  # exponent of the spectrum weight
        patch_factor: int = 1  # the DFT of patch_factor x patch_factor patches
        ave_spectrum: bool = False  # compare minibatch-average spectra
        log_matrix: bool = False  # log(1 + w) before normalising
        batch_matrix: bool = False  # normalise by the batch maximum instead of per image and channel

    def __init__(self, loss_weight: float = 1.0, alpha: float = 1.0, patch_factor: int = 1,
                 ave_spectrum: bool = False, log_matrix: bool = False, batch_matrix: bool = False):
        super().__init__()
        if patch_factor < 1:
            raise ValueError(f"FocalFrequencyLoss: patch_factor must be >= 1, got {patch_factor}")
        self.loss_weight, self.alpha, self.patch_factor = loss_weight, alpha, patch_factor
        self.ave_spectrum, self.log_matrix, self.batch_matrix = ave_spectrum, log_matrix, batch_matrix

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, C, h, w) complex: the DFT of each of the P = patch_factor^2 patches."""
        b, c, h, w = x.shape
        p = self.patch_factor
        if h % p or w % p:
            raise ValueError(f"FocalFrequencyLoss: patch_factor {p} does not divide the image size {h}x{w}")
        patches = x.reshape(b, c, p, h // p, p, w // p).permute(0, 2, 4, 1, 3, 5).reshape(b, p * p, c, h // p, w // p)
        return torch.fft.fft2(patches.float(), norm="ortho")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fp, ft = self._spectrum(pred), self._spectrum(target)
        if self.ave_spectrum:
            fp, ft = fp.mean(0, keepdim=True), ft.mean(0, keepdim=True)
        diff = fp - ft
        distance = diff.real**2 + diff.imag**2
        with torch.no_grad():
            weight = distance.sqrt() ** self.alpha
            if self.log_matrix:
                weight = torch.log(weight + 1.0)
            if self.batch_matrix:
                weight = weight / weight.max()
            else:
                weight = weight / weight.amax(dim=(-2, -1), keepdim=True)
            weight = torch.nan_to_num(weight, nan=0.0).clamp(0.0, 1.0)
        return self.loss_weight * (weight * distance).mean()


class FFTLoss(nn.Module):
    short_name = "fft"

    @dataclass
    class Options:
        type: str = "FFTLoss"
        loss_weight: float = 1.0
        criterion: str = "l1"  # l1 | l2

    def __init__(self, loss_weight: float = 1.0, criterion: str = "l1"):
        super().__init__()
        if criterion not in ("l1", "l2"):
            raise ValueError(f"FFTLoss: criterion {criterion!r} is unknown; use l1 or l2")
        self.loss_weight, self.criterion = loss_weight, criterion

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fp = torch.view_as_real(torch.fft.rfft2(pred.float(), norm="ortho"))
        ft = torch.view_as_real(torch.fft.rfft2(target.float(), norm="ortho"))
        dist = F.l1_loss(fp, ft) if self.criterion == "l1" else F.mse_loss(fp, ft)
        return self.loss_weight * dist
