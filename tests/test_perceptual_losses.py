"""Perceptual and structural losses against independent implementations on the same (random) weights:
VGG feature loss vs basicsr's PerceptualLoss, LPIPS / DISTS vs pyiqa's metrics, the focal frequency loss vs
its official package, MS-SSIM vs pyiqa; plus the formulas of the FFT, colour and luma losses."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ggt_ir._compat import patch_basicsr_imports
from ggt_ir.losses import LOSSES, build_loss

patch_basicsr_imports()


def random_torchvision_weights(arch: str, path: Path, seed: int = 0) -> Path:
    """torchvision's state-dict layout for ``arch`` with random features; the unused classifier is stored as
    stride-0 tensors so the file stays small."""
    import torchvision.models as tvm

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in tvm.get_model(arch, weights=None).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.startswith("classifier."):
            sd[k] = torch.zeros(1).expand(shape)
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("bias") or k.endswith("running_mean"):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 40, generator=g)
    return x, (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights folder with random torchvision backbones and pyiqa's LPIPS / DISTS files (eval's writer)."""
    from ggt_ir.testing.weights import write_random_weights

    root = tmp_path_factory.mktemp("weights")
    random_torchvision_weights("vgg19", root / "checkpoints" / "vgg19-dcbb9e9d.pth")
    for metric in ("lpips", "lpips-vgg", "dists"):
        write_random_weights(metric, root)
    return root


# ---------------------------------------------------------------------------------------------- VGG
@pytest.mark.parametrize("extra", [{}, {"style_weight": 0.5, "criterion": "fro"}, {"criterion": "l2"}])
def test_vgg_perceptual_loss_matches_basicsr(weights, images, monkeypatch, extra):
    import basicsr.archs.vgg_arch as vgg_arch
    from basicsr.losses.basic_loss import PerceptualLoss as Ref

    vgg_file = weights / "checkpoints" / "vgg19-dcbb9e9d.pth"
    monkeypatch.setattr(vgg_arch, "VGG_PRETRAIN_PATH", str(vgg_file))  # basicsr loads its VGG from there
    opts = LOSSES.check({"type": "PerceptualLoss", "weights_dir": str(weights), **extra}, "x.yml", "train.losses[0]")
    ours = build_loss(opts)
    assert ours.layer_weights == {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
    pred, gt = images
    value = ours(pred, gt)
    if extra.get("criterion") == "l2":  # basicsr 1.4.2 cannot build its 'l2' (torch.nn.L2loss): compare by hand
        feats_p, feats_g = ours.vgg(pred), ours.vgg(gt)
        expect = sum(w * torch.nn.functional.mse_loss(feats_p[k], feats_g[k]) for k, w in ours.layer_weights.items())
    else:
        ref = Ref(ours.layer_weights, vgg_type="vgg19", perceptual_weight=1.0,
                  style_weight=extra.get("style_weight", 0.0), criterion=extra.get("criterion", "l1"))
        percep, style = ref(pred, gt)
        expect = percep + (style if style is not None else 0)
    assert value.item() == pytest.approx(float(expect), rel=1e-5)


def test_vgg_loss_gradients_and_bad_options(weights, images):
    from ggt_ir.losses.perceptual import PerceptualLoss

    pred, gt = images
    pred = pred.clone().requires_grad_(True)
    loss = PerceptualLoss({"relu2_2": 1.0}, weights_dir=str(weights))
    loss(pred, gt).backward()
    assert pred.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss.parameters())
    with pytest.raises(ValueError, match="unknown layer"):
        PerceptualLoss({"conv9_9": 1.0}, weights_dir=str(weights))
    with pytest.raises(ValueError, match="criterion"):
        PerceptualLoss(criterion="l3", weights_dir=str(weights))


def test_missing_weight_file_says_where_and_from_where(tmp_path):
    from ggt_ir.losses.perceptual import PerceptualLoss

    with pytest.raises(FileNotFoundError) as e:
        PerceptualLoss(weights_dir=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth") in msg
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in msg


# ---------------------------------------------------------------------------------------------- LPIPS, DISTS
def pyiqa_scores(metric: str, weights: Path, x, y) -> torch.Tensor:
    import pyiqa

    from ggt_ir.eval.weights import offline_weights

    with offline_weights(metric, weights):
        m = pyiqa.create_metric(metric, device="cpu")
    return m(x, y).flatten()


@pytest.mark.parametrize("net,metric", [("vgg", "lpips-vgg"), ("alex", "lpips")])
def test_lpips_loss_matches_pyiqa(weights, images, net, metric):
    from ggt_ir.losses.perceptual import LPIPSLoss

    pred, gt = images
    loss = LPIPSLoss(loss_weight=2.0, net=net, weights_dir=str(weights))
    ref = pyiqa_scores(metric, weights, pred, gt)
    assert torch.allclose(loss.net(pred, gt), ref, rtol=1e-4, atol=1e-6)
    assert loss(pred, gt).item() == pytest.approx(2.0 * ref.mean().item(), rel=1e-4)


def test_dists_loss_matches_pyiqa(weights, images):
    from ggt_ir.losses.perceptual import DISTSLoss

    pred, gt = images
    loss = DISTSLoss(weights_dir=str(weights))
    ref = pyiqa_scores("dists", weights, pred, gt)
    assert torch.allclose(loss.net(pred, gt), ref, rtol=1e-4, atol=1e-6)
    p = pred.clone().requires_grad_(True)
    loss(p, gt).backward()
    assert p.grad.abs().sum() > 0


def test_generative_lpips_is_the_same_module(weights, images):
    """The generative steps' LPIPSVGG is the losses' LPIPS (one implementation)."""
    from ggt_ir.generative.lpips import LPIPSVGG
    from ggt_ir.losses.lpips import LPIPSNet

    net = LPIPSVGG(weights_dir=str(weights))
    assert isinstance(net, LPIPSNet)
    assert torch.equal(net(*images), LPIPSNet("vgg", str(weights))(*images))


# ---------------------------------------------------------------------------------------------- frequency
@pytest.mark.parametrize("opts", [{}, {"alpha": 2.0, "log_matrix": True}, {"patch_factor": 2, "batch_matrix": True},
                                  {"ave_spectrum": True, "loss_weight": 3.0}])
def test_focal_frequency_loss_matches_the_official_package(images, opts):
    from focal_frequency_loss import FocalFrequencyLoss as Official

    from ggt_ir.losses.frequency import FocalFrequencyLoss

    pred, gt = images
    assert FocalFrequencyLoss(**opts)(pred, gt).item() == pytest.approx(Official(**opts)(pred, gt).item(), rel=1e-5)


def test_fft_loss_formula(images):
    from ggt_ir.losses.frequency import FFTLoss

    pred, gt = images
    fp, fg = torch.fft.rfft2(pred, norm="ortho"), torch.fft.rfft2(gt, norm="ortho")
    expect = ((fp.real - fg.real).abs().sum() + (fp.imag - fg.imag).abs().sum()) / (2 * fp.numel())
    assert FFTLoss(loss_weight=0.5)(pred, gt).item() == pytest.approx(0.5 * expect.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- colour, luma
def test_color_and_luma_losses_separate_chroma_from_brightness(images):
    from ggt_ir.losses.color import ColorLoss, LumaLoss

    x, _ = images
    brighter = x + 0.1  # a grey shift: Cb/Cr unchanged (the BT.601 chroma rows sum to 0)
    assert ColorLoss()(brighter, x).item() == pytest.approx(0.0, abs=1e-6)
    assert LumaLoss()(brighter, x).item() == pytest.approx(0.1 * 219 / 255, rel=1e-4)  # the Y row sums to 219/255
    tinted = x.clone()
    tinted[:, 2] += 0.1  # more blue
    assert ColorLoss()(tinted, x).item() == pytest.approx((112.0 + 18.214) / 255 * 0.1 / 2, rel=1e-4)
    assert ColorLoss(blur_sigma=2.0)(tinted, x).item() == pytest.approx(ColorLoss()(tinted, x).item(), rel=1e-3)
    assert LOSSES.check({"type": "LumaLoss"}, "x", "k").type == "LumaLoss"


# ---------------------------------------------------------------------------------------------- MS-SSIM
def test_ms_ssim_loss_matches_pyiqa():
    from pyiqa.archs.ssim_arch import ms_ssim as ref

    from ggt_ir.losses.ssim import MSSSIMLoss, ms_ssim

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 171, 180, generator=g)  # odd size: the padded pooling
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(ms_ssim(x, y), ref(x, y, data_range=1.0), rtol=1e-4)
    assert MSSSIMLoss()(x, x).item() == pytest.approx(0.0, abs=1e-5)
    p = y.clone().requires_grad_(True)
    MSSSIMLoss()(p, x).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 161 px"):
        MSSSIMLoss()(x[..., :128, :128], y[..., :128, :128])
    assert MSSSIMLoss(weights=[0.0448, 0.2856, 0.3001])(x[..., :64, :64], y[..., :64, :64]).item() > 0


def test_ms_ssim_loss_is_finite_for_predictions_outside_the_image_range():
    """An untrained network's output can be negative: a negative luminance term to a fractional power was NaN
    (a demo run with MSSSIMLoss stopped at iteration 4 with l_msssim=nan)."""
    from ggt_ir.losses.ssim import MSSSIMLoss

    torch.manual_seed(0)
    p = (-torch.rand(2, 3, 64, 64)).requires_grad_()
    loss = MSSSIMLoss(weights=[0.3, 0.3, 0.4], win_size=7)(p, torch.rand(2, 3, 64, 64))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
