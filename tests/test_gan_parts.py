"""GAN parts: the adversarial losses against their formulas (and BasicSR), the gradient penalty, and the
discriminators (Real-ESRGAN's U-Net loads BasicSR's weights strictly; PatchGANs; the vision-aided one on tiny
random DINOv2 / ConvNeXt backbones written to a folder)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ggt_ir._compat  # noqa: F401  (basicsr import shim)
from ggt_ir._compat import patch_basicsr_imports
from ggt_ir.archs import ARCHS, build_network
from ggt_ir.losses import LOSSES, build_loss
from ggt_ir.losses.gan import GANLoss, gradient_penalty, r1_penalty

patch_basicsr_imports()

G = torch.Generator().manual_seed(0)
REAL = torch.randn(4, 1, 5, 5, generator=G)
FAKE = torch.randn(4, 1, 5, 5, generator=G)
log_sig = F.logsigmoid


# ---------------------------------------------------------------------------------------------- GAN losses
FORMULAS = {  # gan_type: (D loss (real, fake), G loss (fake))
    "vanilla": (lambda r, f: -log_sig(r).mean() - log_sig(-f).mean(), lambda f: -log_sig(f).mean()),
    "lsgan": (lambda r, f: ((r - 1) ** 2).mean() + (f**2).mean(), lambda f: ((f - 1) ** 2).mean()),
    "hinge": (lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(), lambda f: -f.mean()),
    "wgan": (lambda r, f: -r.mean() + f.mean(), lambda f: -f.mean()),
    "wgan_softplus": (lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(), lambda f: F.softplus(-f).mean()),
}


@pytest.mark.parametrize("gan_type", list(FORMULAS))
def test_gan_losses_match_their_formulas(gan_type):
    d_formula, g_formula = FORMULAS[gan_type]
    gan = GANLoss(gan_type, loss_weight=0.1)
    d = gan.discriminator_losses(REAL, FAKE)
    assert (d["l_d_real"] + d["l_d_fake"]).item() == pytest.approx(d_formula(REAL, FAKE).item(), rel=1e-5)
    assert gan.generator_loss(FAKE).item() == pytest.approx(0.1 * g_formula(FAKE).item(), rel=1e-5)


@pytest.mark.parametrize("gan_type", list(FORMULAS))
def test_gan_losses_match_basicsr(gan_type):
    from basicsr.losses.gan_loss import GANLoss as BasicSRGANLoss

    ours, ref = GANLoss(gan_type, loss_weight=0.3), BasicSRGANLoss(gan_type, loss_weight=0.3)
    for pred in (REAL, FAKE):
        for real in (True, False):
            for is_disc in (True, False):
                if gan_type == "hinge" and not is_disc and not real:
                    continue  # not a case a GAN step calls
                assert ours(pred, real, is_disc).item() == pytest.approx(ref(pred, real, is_disc).item(), rel=1e-6)


def test_label_values_and_lists_of_predictions():
    gan = GANLoss("vanilla", real_label_val=0.9, fake_label_val=0.1)
    expect = F.binary_cross_entropy_with_logits(REAL, torch.full_like(REAL, 0.9))
    assert gan.discriminator_losses(REAL, FAKE)["l_d_real"].item() == pytest.approx(expect.item(), rel=1e-6)
    # multi-scale discriminators: the mean over the maps
    small = torch.randn(4, 1, 2, 2, generator=G)
    both = gan.generator_loss([FAKE, small])
    assert both.item() == pytest.approx((gan.generator_loss(FAKE) + gan.generator_loss(small)).item() / 2, rel=1e-6)


@pytest.mark.parametrize("base", ["vanilla", "lsgan"])
def test_relativistic_average_matches_esrgan(base):
    """ESRGAN's RaGAN as BasicSR's ESRGANModel composes it from its GANLoss, values and gradient paths."""
    from basicsr.losses.gan_loss import GANLoss as BasicSRGANLoss

    ref = BasicSRGANLoss(base, loss_weight=0.5)
    gan = GANLoss(base, relativistic=True, loss_weight=0.5)
    real, fake = REAL.clone().requires_grad_(True), FAKE.clone().requires_grad_(True)
    # generator side (BasicSR: real_d_pred detached)
    l_g = gan.generator_loss(fake, real)
    rd = real.detach()
    expect_g = (ref(rd - fake.mean(), False) + ref(fake - rd.mean(), True)) / 2
    assert l_g.item() == pytest.approx(expect_g.item(), rel=1e-6)
    l_g.backward()
    assert real.grad is None and fake.grad.abs().sum() > 0
    # discriminator side: each term carries gradient only through the prediction it judges
    real.grad = fake.grad = None
    d = gan.discriminator_losses(real, fake)
    expect_real = ref(REAL - FAKE.mean(), True, is_disc=True) * 0.5
    expect_fake = ref(FAKE - REAL.mean(), False, is_disc=True) * 0.5
    assert d["l_d_real"].item() == pytest.approx(expect_real.item(), rel=1e-6)
    assert d["l_d_fake"].item() == pytest.approx(expect_fake.item(), rel=1e-6)
    (g_real,) = torch.autograd.grad(d["l_d_real"], fake, allow_unused=True)
    assert g_real is None
    with pytest.raises(ValueError, match="real_pred"):
        gan.generator_loss(fake)


def test_gan_options_and_bad_values():
    opts = LOSSES.check({"type": "GANLoss", "gan_type": "hinge", "loss_weight": 0.1}, "x.yml", "train.gan_opt")
    assert isinstance(build_loss(opts), GANLoss) and build_loss(opts).gan_type == "hinge"
    with pytest.raises(ValueError, match="gan_type 'wgangp' is unknown"):
        GANLoss("wgangp")
    with pytest.raises(ValueError, match="relativistic"):
        GANLoss("hinge", relativistic=True)
    from ggt_ir.config import OptionsError

    with pytest.raises(OptionsError, match="gan_type"):
        LOSSES.check({"type": "GANLoss", "gan_typ": "vanilla"}, "x.yml", "train.gan_opt")


def test_gan_loss_is_refused_among_image_losses():
    from ggt_ir.train.options import TrainOptions
    from ggt_ir.losses import build_losses

    with pytest.raises(ValueError, match="train.gan_opt"):
        build_losses(TrainOptions(losses=[GANLoss.Options()]))


# ---------------------------------------------------------------------------------------------- penalties
class LinearD(torch.nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere, so the WGAN-GP penalty is (||w|| - 1)^2 exactly."""

    def __init__(self, shape):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.2)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_exact_on_a_linear_critic():
    d = LinearD((3, 4, 4))
    real, fake = torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4)
    gp = gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(0))
    expect = (d.w.detach().norm() - 1) ** 2
    assert gp.item() == pytest.approx(expect.item(), rel=1e-5)
    gp.backward()  # differentiable w.r.t. the critic: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    w = d.w.detach()
    assert torch.allclose(d.w.grad, 2 * (w.norm() - 1) * w / w.norm(), atol=1e-5)


def test_gradient_penalty_against_a_direct_formula():
    torch.manual_seed(0)
    net_d = build_network({"type": "PatchGANDiscriminatorSN", "num_feat": 4, "num_layers": 2}).eval()
    real, fake = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    alpha = torch.tensor([0.2, 0.5, 0.9])
    gp = gradient_penalty(net_d, real, fake, alpha=alpha)
    per_sample = []
    for i in range(3):  # one sample at a time, by hand
        x = (alpha[i] * real[i : i + 1] + (1 - alpha[i]) * fake[i : i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(net_d(x).sum(), x)
        per_sample.append((g.norm() - 1) ** 2)
    assert gp.item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-5)
    gan = GANLoss("wgan", gp_weight=10.0)
    assert gan.penalty(net_d, real, fake, generator=torch.Generator().manual_seed(3)).item() > 0
    assert GANLoss("wgan").penalty(net_d, real, fake).item() == 0


def test_r1_penalty_on_a_linear_critic():
    d = LinearD((3, 4, 4))
    real = torch.rand(2, 3, 4, 4, requires_grad=True)
    assert r1_penalty(d(real), real).item() == pytest.approx(d.w.detach().pow(2).sum().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- discriminators
def test_unet_discriminator_loads_basicsr_weights_strictly():
    from basicsr.archs.discriminator_arch import UNetDiscriminatorSN as Ref

    torch.manual_seed(0)
    ref = Ref(3, num_feat=16)
    x = torch.rand(2, 3, 32, 40)
    ref(x)  # one training-mode step of the spectral-norm power iteration, so u/v are not at init
    ours = build_network({"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 16})
    assert ours.load_state_dict({"params": ref.state_dict()}["params"], strict=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for mode in ("eval", "train"):  # train: both update u identically
        getattr(ref, mode)(), getattr(ours, mode)()
        assert torch.allclose(ours(x), ref(x), atol=1e-6)
    assert ours(torch.rand(1, 3, 30, 21)).shape == (1, 1, 30, 21)  # padded inside, cropped back


def test_unet_discriminator_loads_through_load_weights(tmp_path):
    from basicsr.archs.discriminator_arch import UNetDiscriminatorSN as Ref

    from ggt_ir.archs.weights import load_weights

    ref = Ref(3, num_feat=8)
    torch.save({"params": ref.state_dict()}, tmp_path / "net_d.pth")  # Real-ESRGAN's release layout
    ours = build_network({"type": "UNetDiscriminatorSN", "num_feat": 8})
    report = load_weights(ours, tmp_path / "net_d.pth", strict=True)
    assert report.param_key == "params" and not report.missing


def test_patchgan_key_layout_and_receptive_field():
    d = build_network({"type": "PatchGANDiscriminatorSN", "num_feat": 4, "num_layers": 3})
    convs = sorted({int(k.split(".")[1]) for k in d.state_dict()})
    assert convs == [0, 2, 4, 6, 8]  # KAIR's Discriminator_PatchGAN(norm_type='spectral') layout
    assert {k.split(".", 2)[2] for k in d.state_dict()} == {"bias", "weight_orig", "weight_u", "weight_v"}
    d.eval()
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum((0, 1)).sum(1)).flatten()
    assert 0 < rows.max() - rows.min() + 1 <= 70  # the 70x70 PatchGAN


def test_multiscale_patchgan_returns_one_map_per_scale():
    d = build_network({"type": "MultiScalePatchGANDiscriminatorSN", "num_feat": 4, "num_layers": 2, "num_scales": 3})
    outs = d(torch.rand(2, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [19, 11, 7] and len(d.discriminators) == 3
    assert GANLoss("hinge").generator_loss(outs).dim() == 0


def test_every_discriminator_is_registered():
    for name in ("UNetDiscriminatorSN", "PatchGANDiscriminatorSN", "MultiScalePatchGANDiscriminatorSN",
                 "VisionAidedDiscriminator"):
        assert name in ARCHS


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
    """Random tiny backbones in the layouts their libraries load: transformers folders and a timm file."""
    import timm
    from safetensors.torch import save_file
    from transformers import ConvNextConfig, ConvNextModel, Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32, num_register_tokens=0)).save_pretrained(root / "dinov2")
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])).save_pretrained(root / "convnext")
    save_file(timm.create_model("test_convnext", pretrained=False).state_dict(), str(root / "test_convnext.safetensors"))
    return root


@pytest.mark.parametrize("kind", ["dinov2", "convnext", "timm"])
def test_vision_aided_discriminator_on_frozen_backbones(tiny_backbones, kind, tmp_path):
    spec = {"type": "VisionAidedDiscriminator", "head_channels": 8}
    if kind == "dinov2":
        spec.update(backbone=str(tiny_backbones / "dinov2"), layers=[1, 2], input_size=32)
    elif kind == "convnext":
        spec.update(backbone=str(tiny_backbones / "convnext"), layers=[2, 4], input_size=64)
    else:
        spec.update(backbone="test_convnext", backbone_library="timm", layers=[1, 2], input_size=64,
                    backbone_weights=str(tiny_backbones / "test_convnext.safetensors"))
    d = build_network(spec).train()
    assert not d.backbone.training  # frozen backbone stays in eval mode
    x = torch.rand(2, 3, 48, 40, requires_grad=True)
    outs = d(x)
    assert len(outs) == 2 and all(o.shape[:2] == (2, 1) for o in outs)
    GANLoss("hinge").generator_loss(outs).backward()
    assert x.grad.abs().sum() > 0  # the generator's loss flows through the frozen backbone
    assert all(p.grad is None for p in d.backbone.parameters())
    assert all(p.grad is not None for p in d.heads.parameters() if p.requires_grad)
    if kind == "timm":  # the weights came from the file, not from a random init
        from safetensors.torch import load_file

        ref = load_file(str(tiny_backbones / "test_convnext.safetensors"))
        k = "stem.0.weight"
        assert torch.equal(d.backbone.state_dict()["stem_0.weight"], ref[k])  # features_only flattens names
    # a saved discriminator reloads strictly into a fresh one (heads and backbone)
    torch.save(d.state_dict(), tmp_path / "d.pth")
    again = build_network(spec)
    again.load_state_dict(torch.load(tmp_path / "d.pth", weights_only=True), strict=True)
    d.eval(), again.eval()
    x = torch.rand(1, 3, 48, 40)
    assert all(torch.equal(a, b) for a, b in zip(d(x), again(x)))


def test_vision_aided_discriminator_errors(tmp_path, tiny_backbones):
    with pytest.raises(FileNotFoundError, match="cannot load backbone"):
        build_network({"type": "VisionAidedDiscriminator", "backbone": str(tmp_path / "nothing")})
    with pytest.raises(ValueError, match="out of range"):
        build_network({"type": "VisionAidedDiscriminator", "backbone": str(tiny_backbones / "dinov2"),
                       "layers": [7], "input_size": 32})
